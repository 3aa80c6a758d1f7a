"""Every touch of Faust's private internals, in one place, checked at start-up.

clawstream relies on faust-streaming 0.15.3 behaving as read here; each patch below names
the upstream defect it works around. :func:`install` (called by the composition root,
:mod:`clawstream.processors.worker`) refuses any other Faust version and any Faust whose
private attributes used here are missing, so an upgrade fails in seconds, at start-up and
in ``tests/unit/test_faust_fence.py``, instead of losing records in production.

The patches:

1. **Records fetched and not delivered, then committed through as a gap** (faust-streaming
   #606, #502, #323). ``Consumer.getmany`` yields a fetched record only if its partition is
   still active when the record's turn comes, and only while the flow and the generation
   are unchanged; otherwise the rest of the batch is dropped, and the fetch position has
   already moved past it (right after a table recovery it drops tens of records this way).
   When the next record of that partition is delivered, Faust sees a hole in the offsets
   and, taking it for a compacted range, ``_add_gap`` counts the hole as done: the next
   commit passes the dropped records, and no restart will ever read them again
   (``bench recovery`` lost 18, then 106 requests this way). :class:`GaplessConsumer`'s
   ``getmany`` sends a partition's position back to the first record it does not deliver,
   so it is fetched again (aiokafka throws away what it had prefetched past a seek). And
   since our topics are neither compacted nor transactional (``streams/topics.py``), a hole
   in what is delivered from them can only mean dropped records: it is not counted as
   done, and the worker restarts in place, its committed offset still before the hole.
   Records the log no longer holds (retention passed while nobody read them) cannot be
   read again; they are logged and counted as done, or the worker would restart forever.
   Faust's own compacted changelog topics keep Faust's rule. One hole neither rule sees:
   the record *at* the committed offset. Faust's last-read offset after a seek is the
   committed offset itself (the next record to read, not the last one read), so a first
   record after it looks contiguous, and ``_new_offset`` lets the first acked offset be
   one past the committed one: the commit passes a record no agent ever saw.
   :meth:`GaplessConsumer._new_offset` does not commit past it; the record stays the
   partition's position, and the stall watchdog restarts the worker, which reads it again.
2. **Table recovery that never ends** (faust-streaming #74, #155, #176, #158, #432; #597
   with an empty changelog partition; #651 with ``auto_offset_reset=latest``). Nothing in
   Faust notices; the stall watchdog (``processors/stall.py``) does, and needs what only
   Faust's internals know: the offsets acked and not yet committed
   (:func:`acked_offsets`, ``Consumer._acked_index``) and the recovery's position
   (:func:`recovery_marker`, ``Recovery.active_offsets``).
3. **SIGTERM cancels agents mid-step** (no upstream issue: Faust's ``Worker`` has no drain
   hook). :class:`DrainingWorker` overrides ``Worker._on_sigterm`` to run a drain first and
   then Faust's own ``_schedule_shutdown``.
4. **Retries that write a record twice** (no upstream issue: Faust asks aiokafka for an
   idempotent producer only inside transactions, ``Producer._settings_extra``). With
   acks=all and several brokers, a leader that dies after its followers have a batch but
   before it answers makes the producer send the batch again to the new leader: the
   answers topic then held the same answer twice (the 3-broker test saw 2 in ~200).
   :class:`IdempotentProducer` turns idempotence on, so the broker drops the repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from typing import Any

import faust
from aiokafka.errors import IllegalStateError
from faust.transport.drivers import aiokafka as faust_kafka
from faust.types import TP, AppT, Message

from clawstream.processors.restart import restart_in_place
from clawstream.streams.topics import CATALOGUE

log = logging.getLogger(__name__)

CONTIGUOUS_TOPICS = frozenset(t.name for t in CATALOGUE if not t.compacted)
# What the log says when a guard acts (bench recovery counts them).
FETCHED_AGAIN = "fetching again from offset"
DROPPED = "were fetched and never delivered"
NOT_DELIVERED = "was never delivered; not committing past it"


FAUST_VERSION = "0.15.3"
PRIVATE_ATTRIBUTES: dict[type, tuple[str, ...]] = {
    # patch 1: GaplessConsumer.getmany re-implements Faust's, with these
    faust_kafka.Consumer: ("_wait_next_records", "_to_message", "_seek", "_add_gap",
                           "_new_offset",
                           "perform_seek", "flow_active", "highwater", "earliest_offsets",
                           "getmany"),
    faust_kafka.Transport: ("Consumer", "Producer"),
    # patch 4
    faust_kafka.Producer: ("_settings_extra",),
    # patch 3
    faust.Worker: ("_on_sigterm", "_schedule_shutdown"),
}
"""Class attributes the patches use; instance attributes are checked on the live app."""


class FenceError(RuntimeError):
    """This Faust is not the one the patches were written against."""


def check() -> None:
    """Raise :class:`FenceError` unless Faust is the pinned version with every private
    attribute the patches use."""
    if faust.__version__ != FAUST_VERSION:
        raise FenceError(f"faust-streaming {faust.__version__} is installed; clawstream's "
                         f"patches (processors/faust_fence.py) are written for "
                         f"{FAUST_VERSION}: re-check each against the new version first")
    missing = [f"{cls.__qualname__}.{name}" for cls, names in PRIVATE_ATTRIBUTES.items()
               for name in names if not hasattr(cls, name)]
    if missing:
        raise FenceError(f"faust-streaming lacks what the patches use: {', '.join(missing)}")


def check_app(app: AppT) -> None:
    """The instance attributes the patches use, on a live app (its consumer and table
    recovery are created on first access, without connecting)."""
    objects = {"App": app, "Consumer": app.consumer,
               "Recovery": app.tables.recovery,  # type: ignore[attr-defined]
               "Monitor": app.monitor}
    wanted = {"App": ("consumer_generation_id", "in_recovery", "rebalancing"),
              "Consumer": ("_acked_index", "_buffered_partitions", "scheduler", "_acked",
                           "_committed_offset", "_gap"),
              "Recovery": ("active_offsets", "completed"),
              "Monitor": ("track_tp_end_offset",)}
    missing = [f"{kind}.{name}" for kind, names in wanted.items() for name in names
               if not hasattr(objects[kind], name)]
    if missing:
        raise FenceError(f"faust-streaming lacks what the patches use: {', '.join(missing)}")


def install() -> None:
    """Check, then make the Kafka transport create :class:`GaplessConsumer` and
    :class:`IdempotentProducer` (before an app creates them). Idempotent."""
    check()
    faust_kafka.Transport.Consumer = GaplessConsumer
    faust_kafka.Transport.Producer = IdempotentProducer


class IdempotentProducer(faust_kafka.Producer):
    """Faust's producer with idempotence on (patch 4): a retried batch is written once."""

    def _settings_extra(self) -> Mapping[str, Any]:
        return {**super()._settings_extra(), "acks": "all", "enable_idempotence": True}


def acked_offsets(app: AppT, tp: tuple[str, int]) -> Collection[int]:
    """Offsets of ``tp`` the agents acked that Faust has not committed yet."""
    index = app.consumer._acked_index  # type: ignore[attr-defined]
    return index.get(tp, ())  # type: ignore[no-any-return]


def consumer_positions(app: AppT) -> list[tuple[str, int, int, int | None]]:
    """(topic, partition, high watermark, committed offset) of every partition the
    worker's consumer holds, from what the consumer already knows (no broker call: this
    runs in a Prometheus scrape). Empty before the consumer has started."""
    consumer = app.consumer
    committed = consumer._committed_offset  # type: ignore[attr-defined]
    out = []
    try:
        assigned = consumer.assignment()
    except Exception:  # not started yet, or stopping: a scrape must not fail for it
        return []
    for tp in assigned:
        try:
            high = consumer.highwater(tp)
        except Exception:  # not fetched yet
            continue
        if high is not None:
            out.append((tp.topic, tp.partition, int(high), committed.get(tp)))
    return out


def recovery_marker(app: AppT) -> list[tuple[Any, int]]:
    """The table recovery's position: changes while a recovery makes progress."""
    recovery = app.tables.recovery  # type: ignore[attr-defined]
    return sorted(recovery.active_offsets.items())


def recovered(app: AppT) -> bool:
    """Tables recovered and the app out of recovery: the worker can serve."""
    recovery = app.tables.recovery  # type: ignore[attr-defined]
    return bool(recovery.completed.is_set() and not app.in_recovery)


class DrainingWorker(faust.Worker):
    """A Faust worker that, on SIGTERM, awaits ``drain()`` before Faust's own shutdown."""

    drain: Callable[[], Awaitable[object]] | None = None
    _drain_task: asyncio.Future[None] | None = None

    def _on_sigterm(self) -> None:
        self.on_sigterm_received()
        if self._drain_task is None:
            self._drain_task = asyncio.ensure_future(self._drain_then_stop(), loop=self.loop)

    def on_sigterm_received(self) -> None:
        """Subclass hook, called first on SIGTERM."""

    async def _drain_then_stop(self) -> None:
        try:
            if self.drain is not None:
                await self.drain()
        finally:
            self._schedule_shutdown(signal.SIGTERM)


class GaplessConsumer(faust_kafka.Consumer):
    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:
        """Faust's ``getmany``, except that a record not delivered is fetched again."""
        records, active = await self._wait_next_records(timeout)
        generation = self.app.consumer_generation_id
        if records is None or self.should_stop:
            return
        if not self.flow_active:  # as Faust: a rebalance began; back to the commits
            try:
                await self.perform_seek()
            except Exception as exc:
                log.warning("seeking back to the committed offsets failed: %r", exc)
            return
        held_back: set[TP] = set()
        delivering = True
        for tp, record in self.scheduler.iterate(records):
            if tp in held_back:
                continue
            if not self.flow_active or self.app.consumer_generation_id != generation:
                delivering = False
            if delivering and (active is None or tp in active
                               or tp in self._buffered_partitions):
                self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                yield tp, self._to_message(tp, record)
            else:
                held_back.add(tp)
                await self._fetch_again_from(tp, record.offset)

    def _new_offset(self, tp: TP) -> int | None:
        """Faust's offset to commit for ``tp``, except that for our topics none while the
        record at the committed offset is not acked: Faust commits past it when the acked
        offsets start one after it (its rule lets the first be one past the committed
        offset). ``bench chaos`` lost requests c94a68b0 and 7c5bb7c1 so: the first record
        of a partition after a worker's SIGKILL, resp. the broker's, left no trace at all
        (no event, no state, no dead letter) while the partition's later records were
        answered. Not committing keeps the record the partition's position: the stall
        watchdog (``processors/stall.py``) sees it waiting and restarts the worker, which
        reads it again. Records a gap of Faust's own covers (retention, compacted
        topics) keep Faust's rule."""
        committed = self._committed_offset[tp]
        acked = self._acked[tp]
        if (tp.topic in CONTIGUOUS_TOPICS and committed is not None and acked
                and not self._gap[tp] and min(acked) > committed):
            log.warning("%s[%d]: offset %d %s", tp.topic, tp.partition, committed,
                        NOT_DELIVERED)
            return None
        return super()._new_offset(tp)  # type: ignore[no-any-return]

    async def _fetch_again_from(self, tp: TP, offset: int) -> None:
        log.info("%s[%d]: %s %d (fetched, not delivered)", tp.topic, tp.partition,
                 FETCHED_AGAIN, offset)
        with contextlib.suppress(IllegalStateError):  # no longer ours: its next owner
            await self._seek(tp, offset)              # starts at the committed offset

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        """Faust calls this before delivering ``offset_to`` when the last record it
        delivered for ``tp`` was ``offset_from - 1``."""
        if tp.topic not in CONTIGUOUS_TOPICS:
            await super()._add_gap(tp, offset_from, offset_to)
            return
        where = f"{tp.topic}[{tp.partition}]: offsets {offset_from}..{offset_to - 1}"
        try:
            earliest = (await self.earliest_offsets(tp)).get(tp, 0)
        except Exception as exc:  # cannot tell: the records may still be there
            log.warning("%s: log start offset unknown (%r)", where, exc)
            earliest = 0
        if earliest > offset_from:
            log.error("%s are gone from the log (retention) and were never handled", where)
            await super()._add_gap(tp, offset_from, offset_to)
            return
        restart_in_place(f"{where} {DROPPED} (a Faust rebalance path drops them); the "
                         "committed offset is still before them")
