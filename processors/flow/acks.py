"""Acks in offset order per partition, whatever order the steps finish in.

The dispatcher runs steps out of fetch order (lanes, tenants, concurrency), and Faust
commits the first run of consecutive acked offsets of a partition. On a partition with no
commit yet, Faust does not look for a gap before that run (``Consumer._new_offset``), so
acking offset 5 while offset 3 still waits in a buffer can commit past 3, and a crash then
loses it (seen in ``bench recovery``: requests without any answer). Holding each ack until
every earlier offset of its partition is done keeps the committed offset behind every step
not yet answered, as at-least-once needs.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any


class OrderedAcks:
    def __init__(self) -> None:
        self._pending: dict[Any, OrderedDict[int, list[Any]]] = {}

    def track(self, event: Any) -> None:
        """Call in fetch order, before the event's step is queued."""
        message = event.message
        self._pending.setdefault(message.tp, OrderedDict())[message.offset] = [event, False]

    def done(self, event: Any) -> None:
        """The event's step is finished: ack it and every finished event before it."""
        message = event.message
        queue = self._pending.get(message.tp)
        if queue is None or message.offset not in queue:
            event.ack()  # not tracked (e.g. fetched before a rebalance reset): ack as is
            return
        queue[message.offset][1] = True
        while queue:
            offset, (head, finished) = next(iter(queue.items()))
            if not finished:
                break
            head.ack()
            del queue[offset]
