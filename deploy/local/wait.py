"""Poll a condition until a deadline: the one way the stack waits for anything.

Sleeping a fixed time is either too short on a loaded 2-core machine or too long on a fast
one; polling a real readiness probe with a deadline is both faster and honest about failure.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(
    check: Callable[[], bool],
    *,
    timeout: float,
    interval: float = 0.2,
    abort: Callable[[], str | None] | None = None,
) -> str | None:
    """Call ``check`` until it returns True; return None on success, else why it stopped.

    ``abort`` is asked before every attempt; a non-None answer (say, "the process exited")
    ends the wait at once with that reason, so a crashed component fails fast instead of
    running down the whole deadline. Exceptions from ``check`` count as "not yet".
    """
    deadline = time.monotonic() + timeout
    while True:
        if abort is not None:
            reason = abort()
            if reason is not None:
                return reason
        try:
            if check():
                return None
        except Exception:  # a probe that raises is a probe that says "not yet"
            pass
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return f"not ready after {timeout:.0f} s"
        time.sleep(min(interval, remaining))
