"""Replace a worker that has stopped making progress: a stalled consumer.

Why it exists: Faust 0.15.3 can wedge after a rebalance, and nothing inside the worker
notices. In ``bench recovery`` one surviving worker's table recovery never finished ("No
event received for active tp …-changelog since recovery start", for minutes), so the
partitions it had taken over were served by nobody: the group counted them as owned. Every
request on them went unanswered. Other wedges (a blocked event loop, a fetcher waiting on
a full stream buffer) look the same from outside.

The rule is Burrow's "stalled consumer", on the worker's position in each partition: the
first record it has not handled, i.e. the committed offset moved past every record the
agents have acked since. A partition whose records have been waiting at that position for
``worker_stall_timeout_s`` is stalled. The clock starts when records were first seen
waiting, not at the position's last move: a partition idle for longer than the timeout is
not stalled the moment a record arrives (timed from the last move, a quiet partition looked
stalled unless its first new record was acked before the next check, and healthy workers
were restarted under light load). The commit alone
is no measure: Faust can leave the last handled record of a quiet partition uncommitted
for longer than that. The read position is no measure either: in one ``bench recovery``
run 20 records of a partition the worker had just taken over never reached the agent,
and the consumer saw no hole; only the position above stays behind such records. Reading
a table's changelog counts as progress, so a long recovery of a big table is not mistaken
for a stall.

The check runs in a thread with its own Kafka client, so it sees the broker's truth even
when the event loop or Faust's fetcher is blocked, and a broker it cannot reach makes it
wait, not fire. When it fires, the worker restarts in place (``processors/restart.py``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clawstream.streams.kafka_access import client_config

log = logging.getLogger(__name__)

Partition = tuple[str, int]
STALLED = "worker stalled:"  # how the log says it (bench recovery counts it)


@dataclass
class StallRule:
    """Per partition: the worker's position, and since when records have been waiting at
    it (None: nothing waits); stalled once they have waited ``timeout_s``."""

    timeout_s: float
    _seen: dict[Partition, tuple[int, float | None]] = field(default_factory=dict)
    _recovery: Any = None

    def observe(self, now: float, position: dict[Partition, int],
                highwater: dict[Partition, int], recovery_marker: Any) -> list[Partition]:
        """Partitions stalled as of ``now``. The period starts when records are first seen
        waiting; it starts afresh when the position moves, and for every partition when
        table recovery moved (``recovery_marker`` changed). A partition with nothing waiting
        has no period running, however long ago its position last moved."""
        if recovery_marker != self._recovery:
            self._recovery = recovery_marker
            self._seen = {tp: (offset, None if since is None else now)
                          for tp, (offset, since) in self._seen.items()}
        stalled = []
        for tp, offset in position.items():
            waiting = highwater.get(tp, offset) > offset
            known = self._seen.get(tp)
            if known is None or known[0] != offset or not waiting or known[1] is None:
                self._seen[tp] = (offset, now if waiting else None)
                continue
            if now - known[1] >= self.timeout_s:
                stalled.append(tp)
        for tp in set(self._seen) - position.keys():
            del self._seen[tp]  # no longer ours
        return stalled


class StallWatchdog(threading.Thread):
    """Every few seconds: the worker's partitions of ``topics``, their committed offsets and
    high watermarks from the broker, the offsets acked and not yet committed (``acked``),
    and the table recovery's position; ``restart`` when the rule finds a stall."""

    def __init__(self, *, bootstrap: str, group: str, topics: Iterable[str],
                 timeout_s: float, assignment: Callable[[], set[Partition]],
                 acked: Callable[[Partition], Collection[int]],
                 recovery_marker: Callable[[], Any], loop: asyncio.AbstractEventLoop,
                 restart: Callable[[str], None]) -> None:
        super().__init__(name="stall-watchdog", daemon=True)
        self._servers, self._group, self._topics = bootstrap, group, set(topics)
        self._rule = StallRule(timeout_s)
        self._interval_s = max(0.5, timeout_s / 8)
        self._assignment, self._acked = assignment, acked
        self._recovery_marker = recovery_marker
        self._loop, self._restart = loop, restart
        self._stopped = threading.Event()

    def stop(self) -> None:
        self._stopped.set()

    def run(self) -> None:
        from confluent_kafka import Consumer, KafkaException

        client = Consumer({**client_config(self._servers), "group.id": self._group,
                           "enable.auto.commit": False})
        while not self._stopped.wait(self._interval_s):
            try:
                mine = {tp for tp in self._assignment() if tp[0] in self._topics}
                committed, highwater = _offsets(client, mine)
                position = {tp: first_unhandled(offset, self._acked(tp))
                            for tp, offset in committed.items()}
            except (KafkaException, RuntimeError) as exc:
                # broker away, mid-rebalance, or the acks changed while we read them
                log.debug("stall check skipped: %s", exc)
                continue
            stalled = self._rule.observe(time.monotonic(), position, highwater,
                                         self._safe_marker())
            if stalled and not self._stopped.is_set():
                self._replace(stalled, position, highwater)

    def _safe_marker(self) -> Any:
        try:
            return self._recovery_marker()
        except RuntimeError:  # the dict changed while we read it: that is progress
            return object()

    def _replace(self, stalled: list[Partition], position: dict[Partition, int],
                 highwater: dict[Partition, int]) -> None:
        waiting = ", ".join(f"{t}[{p}] at {position[(t, p)]} of {highwater[(t, p)]}"
                            for t, p in sorted(stalled))
        self._restart(f"{STALLED} no progress for {self._rule.timeout_s:.0f} s on "
                      f"{waiting}. What its tasks were waiting on:\n"
                      f"{_task_report(self._loop)}\n")


def first_unhandled(committed: int, acked: Collection[int]) -> int:
    position = committed
    while position in acked:
        position += 1
    return position


def _offsets(client: Any, partitions: set[Partition]) -> tuple[dict[Partition, int],
                                                               dict[Partition, int]]:
    from confluent_kafka import TopicPartition

    if not partitions:
        return {}, {}
    watermarks = {tp: client.get_watermark_offsets(TopicPartition(*tp), timeout=5)
                  for tp in partitions}
    # No commit yet, or one the log's retention has passed: reading starts at the log's
    # start (auto_offset_reset earliest), so that is where the worker stands.
    committed: dict[Partition, int] = {}
    for tp in client.committed([TopicPartition(t, p) for t, p in partitions], timeout=5):
        key = (tp.topic, tp.partition)
        committed[key] = max(tp.offset, watermarks[key][0])
    highwater = {tp: high for tp, (_, high) in watermarks.items()}
    return committed, highwater


def _task_report(loop: asyncio.AbstractEventLoop, timeout_s: float = 2.0) -> str:
    """Where each asyncio task waits: the innermost calls of its await chain, counted (asked
    of the loop itself, as tasks are not thread-safe). If the loop does not answer, the
    loop itself is blocked."""
    async def describe() -> str:
        waits = Counter(" > ".join(_await_chain(task.get_coro())[-4:])
                        for task in asyncio.all_tasks())
        return "\n".join(f"  {n} x {where}" for where, n in waits.most_common())

    try:
        return asyncio.run_coroutine_threadsafe(describe(), loop).result(timeout=timeout_s)
    except (TimeoutError, RuntimeError):
        return f"  (the event loop did not answer within {timeout_s:g} s: it is blocked)"


def _await_chain(awaitable: Any) -> list[str]:
    chain = []
    while awaitable is not None:
        frame = next((f for f in (getattr(awaitable, a, None)
                                  for a in ("cr_frame", "ag_frame", "gi_frame")) if f), None)
        if frame is not None:
            chain.append(f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno} "
                         f"{frame.f_code.co_name}")
        awaitable = next((n for n in (getattr(awaitable, a, None)
                                      for a in ("cr_await", "ag_await", "gi_yieldfrom"))
                          if n is not None), None)
    return chain
