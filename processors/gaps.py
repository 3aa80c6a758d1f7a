"""Notice when Faust skipped records of a partition, and read them again.

Seen in ``bench recovery``: right after a rebalance the new owner of a partition handled
offsets 36 to 39 of ``agent.requests.interactive`` and then 58, in the same generation.
Faust had fetched 40 to 57 and dropped them between fetch and delivery. The fetch position
had moved past them, so they were never read again: those requests got no answer. The
committed offset did not pass them (acks stay in order), so a later rebalance would have
found them, but nothing made one happen.

The coordinator handles every partition's records in offset order. A jump within one
generation therefore means records were skipped. It seeks back to the first missing
offset and passes over what comes until that offset arrives. Records it had already
handled come again and are recognised as duplicates by the usual rules.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


class GapGuard:
    def __init__(self) -> None:
        self._next: dict[Any, tuple[int, int]] = {}  # tp -> (generation, next offset)
        self._rewinding: dict[Any, int] = {}  # tp -> the offset we sought back to

    def admit(self, message: Any) -> int | None:
        """None if the message is to be handled now; else the offset to seek back to (the
        first time a gap shows) or -1 (pass over it while the rewind is under way)."""
        tp, offset, generation = message.tp, message.offset, message.generation_id
        rewind_to = self._rewinding.get(tp)
        if rewind_to is not None:
            if offset != rewind_to:
                return -1
            del self._rewinding[tp]
        known = self._next.get(tp)
        if known is not None and known[0] == generation and offset > known[1]:
            self._rewinding[tp] = known[1]
            log.warning("%s: offsets %d..%d were skipped; reading them again", tp, known[1],
                        offset - 1)
            return known[1]
        if known is not None and known[0] == generation and offset < known[1]:
            return -1  # already handled in this generation
        self._next[tp] = (generation, offset + 1)
        return None
