"""A Faust consumer that neither drops fetched records nor commits past dropped ones.

Faust 0.15.3 loses records on its rebalance paths (``bench recovery`` lost 18, then 106
requests this way):

- ``Consumer.getmany`` yields a fetched record only if its partition is still active when
  the record's turn comes, and only while the flow and the generation are unchanged.
  Otherwise the rest of the batch is dropped, and the fetch position has already moved
  past it. Right after a table recovery completes it drops tens of records this way.
- When the next record of that partition is delivered, Faust sees a hole in the offsets
  and, taking it for a compacted range, ``_add_gap`` counts the hole as done: the next
  commit passes the dropped records, and no restart will ever read them again.

This consumer's ``getmany`` sends a partition's position back to the first record it does
not deliver, so the record is fetched again when the partition is active again (aiokafka
throws away what it had prefetched past a seek). And since our topics are neither
compacted nor transactional (``streams/topics.py``), a hole in what is delivered from them
can only mean dropped records: it is not counted as done, and the worker restarts in
place, its committed offset still before the hole. Records the log no longer holds
(retention passed while nobody read them) cannot be read again; they are logged and
counted as done, or the worker would restart forever. Faust's own compacted changelog
topics keep Faust's rule.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from aiokafka.errors import IllegalStateError
from faust.transport.drivers import aiokafka as faust_kafka
from faust.types import TP, Message

from clawstream.processors.restart import restart_in_place
from clawstream.streams.topics import CATALOGUE

log = logging.getLogger(__name__)

CONTIGUOUS_TOPICS = frozenset(t.name for t in CATALOGUE if not t.compacted)
# What the log says when a guard acts (bench recovery counts them).
FETCHED_AGAIN = "fetching again from offset"
DROPPED = "were fetched and never delivered"


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


def install() -> None:
    """Make the Kafka transport create this consumer (before the app creates its own)."""
    faust_kafka.Transport.Consumer = GaplessConsumer
