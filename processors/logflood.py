"""One log line per interval for a warning or error that repeats, with how often it did.

While the broker is down every worker logged about 20 ERROR lines a second (aiokafka's
reconnects, Faust's fetch and commit failures), which buries the line that says what
happened and fills disks. A record of WARNING or above passes the first time its kind
(logger, level, message template) is seen in an interval; repeats in the interval are
counted and dropped; the first repeat after the interval passes with the count of the
dropped ones appended. Records below WARNING are never touched.

The filter sits on the root logger's handlers, which every propagated record reaches; its
decision is kept on the record, so a record sent to several handlers is counted once and
goes to all of them or to none.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

_DECISION = "_clawstream_repeat_pass"


@dataclass
class _Kind:
    window_start: float
    dropped: int = 0


class RepeatFilter(logging.Filter):
    """Let one record of each kind through per ``interval_s``; count the rest."""

    def __init__(self, interval_s: float = 10.0, level: int = logging.WARNING,
                 clock: Callable[[], float] = time.monotonic, max_kinds: int = 1000) -> None:
        super().__init__()
        self.interval_s, self.level, self._clock = interval_s, level, clock
        self._max_kinds = max_kinds
        self._kinds: dict[tuple[str, int, str], _Kind] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        decided = getattr(record, _DECISION, None)
        if decided is not None:
            return bool(decided)
        passes = self._decide(record)
        setattr(record, _DECISION, passes)
        return passes

    def _decide(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.level or self.interval_s <= 0:
            return True
        now = self._clock()
        key = (record.name, record.levelno, str(record.msg))
        kind = self._kinds.get(key)
        if kind is None:
            if len(self._kinds) >= self._max_kinds:
                self._forget_old(now)
            self._kinds[key] = _Kind(now)
            return True
        if now - kind.window_start < self.interval_s:
            kind.dropped += 1
            return False
        if kind.dropped:
            record.msg = (f"{record.msg} [this message repeated {kind.dropped} more "
                          f"time(s) in the last {now - kind.window_start:.0f} s]")
        self._kinds[key] = _Kind(now)
        return True

    def _forget_old(self, now: float) -> None:
        """Bound memory: kinds whose interval is over and that dropped nothing go first."""
        for key, kind in list(self._kinds.items()):
            if now - kind.window_start >= self.interval_s and not kind.dropped:
                del self._kinds[key]
        if len(self._kinds) >= self._max_kinds:
            self._kinds.clear()


def install(logger: logging.Logger, interval_s: float) -> RepeatFilter:
    """Put one shared filter on every handler of ``logger`` (the root logger, once Faust
    configured it), so repeats are counted across handlers."""
    repeat = RepeatFilter(interval_s)
    for handler in logger.handlers:
        handler.addFilter(repeat)
    return repeat
