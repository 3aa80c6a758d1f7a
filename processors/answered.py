"""Answers already on the log: the last guard against answering one request twice.

The coordinator sends an event's outputs, waits for the broker, then writes the state
(``Coordinator._apply``): a worker killed between the two leaves the answer on the log and
the state before it in the changelog. The event is read again (its offset was not
committed) and applied again to that state, which answers again: the same outcome, a
second record. Without Kafka transactions the table write and the send cannot be one, so
the log itself is asked: after a rebalance (or a restart) a worker reads, once per
partition it answers on, the request ids its answers partition already holds from
``answer_check_lookback_s`` back, and an answer for one of them becomes an
``answer_already_sent`` event instead. From then on the worker is the partition's only
writer and keeps the counts itself.

A failed request may be redriven: its next run answers again under the same request id.
So the check counts: run ``r`` of a request (``r`` = the redrives before it) answers unless
the log already holds more than ``r`` answers of it.

When the log cannot be read (the broker away), the answer is sent: a second answer with
the same outcome is better than none.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterable

from clawstream.config import Settings
from clawstream.processors.records import Output, event
from clawstream.streams.subscriber import answered_in_partition, key_partition
from clawstream.streams.topics import ANSWERS

log = logging.getLogger(__name__)

ALREADY_SENT = "already answered on the log; not answered again"
"""What the log says when the guard acts (``bench chaos`` counts it)."""
MAX_HELD = 200_000
"""Answered ids held per partition; past it the set is read again from the log (which holds
only the lookback's), so a long-lived worker's sets stay bounded."""


class PriorAnswers:
    """How often each request was answered on this worker's answer partitions, loaded
    lazily."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._loads: dict[int, asyncio.Task[Counter[str]]] = {}

    def forget(self, partitions: Iterable[int] = ()) -> None:
        """Partitions moved: another worker may have answered on them since the counts were
        read. The answers of ``partitions`` (those this worker now coordinates) start loading
        at once, so that the first answer after a rebalance finds them read."""
        self._loads = {}
        for partition in partitions:
            self._load(partition)

    def _load(self, partition: int) -> asyncio.Task[Counter[str]]:
        since_ms = int((time.time() - self._settings.answer_check_lookback_s) * 1000)
        load = self._loads[partition] = asyncio.ensure_future(asyncio.to_thread(
            answered_in_partition, self._settings.bootstrap_servers, ANSWERS.name, partition,
            since_ms))
        # A load nobody awaits (forgotten, or failed before its first use) is not an error.
        load.add_done_callback(lambda done: done.cancelled() or done.exception())
        return load

    def _partition(self, conversation_id: str) -> int:
        return key_partition(conversation_id, self._settings.partitions)

    async def already_sent(self, conversation_id: str, request_id: str, run: int = 0) -> bool:
        """Whether the answers topic has the answer of run ``run`` of ``request_id`` (within
        the lookback): more than ``run`` answers of it."""
        partition = self._partition(conversation_id)
        load = self._loads.get(partition)
        if load is None or (load.done() and load.exception() is not None):
            load = self._load(partition)  # never read, or read while the broker was away
        try:
            answered = await load
        except Exception as exc:  # a broker away: unknown, so the answer goes out
            if self._loads.get(partition) is load:
                del self._loads[partition]
            log.warning("could not read the answers of partition %d (%s); answering "
                        "without the check", partition, exc)
            return False
        return answered[request_id] > run

    def note(self, conversation_id: str, request_id: str) -> None:
        """An answer this worker delivered: a later event of the same request finds it."""
        partition = self._partition(conversation_id)
        load = self._loads.get(partition)
        if load is None or not load.done() or load.exception() is not None:
            return
        answered = load.result()
        answered[request_id] += 1
        if len(answered) > MAX_HELD:
            del self._loads[partition]


def without_answers_to(outputs: list[Output], answered: set[str], now_ms: int,
                       worker: str) -> list[Output]:
    """``outputs`` with each answer to a request of ``answered`` replaced by an
    ``answer_already_sent`` event, and that request's ``answer_emitted`` event left out (it
    went with the first answer)."""
    kept: list[Output] = []
    for output in outputs:
        a, e = output.answer, output.event
        if a is not None and a["request_id"] in answered:
            kept.append(event("answer_already_sent", now_ms, {
                "conversation_id": a["conversation_id"], "request_id": a["request_id"],
                "trace_id": a["trace_id"], "agent": a["agent"]},
                agent_version=a["agent_version"], worker=worker,
                detail={"status": a["status"]}))
        elif not (e is not None and e["event_type"] == "answer_emitted"
                  and e["request_id"] in answered):
            kept.append(output)
    return kept
