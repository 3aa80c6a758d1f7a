"""The Faust fence (processors/faust_fence.py): it refuses any other Faust, or one without
the private attributes the patches use; and the gapless consumer: a fetched record that is
not delivered is fetched again; a hole in what Faust delivers of one of our topics
restarts the worker instead of being committed as done, unless retention removed the
records; compacted topics keep Faust's rule. Faust's consumer state is stood in for by
plain attributes."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterator
from functools import partial
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from faust.transport.drivers import aiokafka as faust_kafka
from faust.types import TP
from intervaltree import IntervalTree

from clawstream.config import Settings
from clawstream.processors import faust_fence as gapless
from clawstream.processors.app import create_app
from clawstream.streams.topics import CONTROL_FLAGS, REQUESTS_INTERACTIVE


def test_the_fence_passes_on_the_pinned_faust() -> None:
    assert faust.__version__ == gapless.FAUST_VERSION
    gapless.check()
    gapless.install()
    assert faust_kafka.Transport.Consumer is gapless.GaplessConsumer


def test_any_other_faust_version_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(faust, "__version__", "0.15.4")
    with pytest.raises(gapless.FenceError, match=r"0\.15\.4 is installed"):
        gapless.install()


def test_a_missing_private_attribute_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    owner = next(c for c in faust_kafka.Consumer.__mro__ if "_add_gap" in vars(c))
    monkeypatch.delattr(owner, "_add_gap")
    with pytest.raises(gapless.FenceError, match=r"Consumer\._add_gap"):
        gapless.check()


def test_the_live_app_has_what_the_patches_read(tmp_path: Any) -> None:
    gapless.install()
    app = create_app(Settings(state_dir=tmp_path), "worker-fence")
    gapless.check_app(app)
    assert isinstance(app.consumer, gapless.GaplessConsumer)
    assert list(gapless.acked_offsets(app, ("t", 0))) == []
    assert gapless.recovery_marker(app) == []
    assert gapless.recovered(app) is False


def test_the_live_app_produces_idempotently(tmp_path: Any) -> None:
    """A batch retried after a leader's death must not be written twice (patch 4)."""
    gapless.install()
    app = create_app(Settings(state_dir=tmp_path), "worker-fence")
    assert isinstance(app.producer, gapless.IdempotentProducer)

    async def idempotent() -> bool:
        client = app.producer._new_producer()  # type: ignore[attr-defined]
        try:
            return client._txn_manager is not None  # aiokafka's idempotence state
        finally:
            await client.stop()

    assert asyncio.run(idempotent())


def _consumer(earliest: int) -> Any:
    consumer: Any = gapless.GaplessConsumer.__new__(gapless.GaplessConsumer)
    consumer._committed_offset = defaultdict(lambda: None)
    consumer._gap = defaultdict(IntervalTree)

    async def earliest_offsets(*tps: TP) -> dict[TP, int]:
        return dict.fromkeys(tps, earliest)

    consumer.earliest_offsets = earliest_offsets
    return consumer


@pytest.fixture
def restarts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    reasons: list[str] = []
    monkeypatch.setattr(gapless, "restart_in_place", reasons.append)
    return reasons


def test_a_hole_in_our_topic_restarts_the_worker_and_is_not_counted_done(
        restarts: list[str]) -> None:
    tp = TP(REQUESTS_INTERACTIVE.name, 1)
    consumer = _consumer(earliest=0)
    asyncio.run(consumer._add_gap(tp, 40, 58))
    assert len(restarts) == 1 and "[1]: offsets 40..57 were fetched and never" in restarts[0]
    assert not consumer._gap[tp]


def test_records_removed_by_retention_are_counted_done_without_a_restart(
        restarts: list[str]) -> None:
    tp = TP(REQUESTS_INTERACTIVE.name, 1)
    consumer = _consumer(earliest=50)
    asyncio.run(consumer._add_gap(tp, 40, 58))
    assert restarts == []
    assert consumer._gap[tp].overlaps(40, 59)


def test_a_compacted_topic_keeps_fausts_rule(restarts: list[str]) -> None:
    tp = TP(CONTROL_FLAGS.name, 0)
    consumer = _consumer(earliest=0)
    asyncio.run(consumer._add_gap(tp, 3, 7))
    assert restarts == []
    assert consumer._gap[tp].overlaps(3, 8)


A, B = TP(REQUESTS_INTERACTIVE.name, 0), TP(REQUESTS_INTERACTIVE.name, 1)


def _fetching(batch: list[tuple[TP, int]], on_yield: Any) -> tuple[Any, list[Any]]:
    """A consumer whose next fetch returns ``batch``; ``on_yield(consumer, tp, offset)``
    runs as each record's turn comes (to pause a partition or start a rebalance)."""
    seeks: list[Any] = []
    consumer: Any = SimpleNamespace(flow_active=True, should_stop=False,
                                    _buffered_partitions=set())
    consumer.active = {A, B}
    consumer.app = SimpleNamespace(consumer_generation_id=1,
                                   monitor=SimpleNamespace(
                                       track_tp_end_offset=lambda tp, offset: None))

    async def wait_next_records(timeout: float) -> Any:
        return batch, consumer.active

    def iterate(records: list[tuple[TP, int]]) -> Iterator[tuple[TP, Any]]:
        for tp, offset in records:
            on_yield(consumer, tp, offset)
            yield tp, SimpleNamespace(offset=offset)

    async def seek(tp: TP, offset: int) -> None:
        seeks.append((tp, offset))

    consumer._wait_next_records = wait_next_records
    consumer.scheduler = SimpleNamespace(iterate=iterate)
    consumer.highwater = lambda tp: 100
    consumer._to_message = lambda tp, record: (tp, record.offset)
    consumer._seek = seek
    consumer._fetch_again_from = partial(gapless.GaplessConsumer._fetch_again_from, consumer)
    return consumer, seeks


def _delivered(consumer: Any) -> list[Any]:
    async def run() -> list[Any]:
        return [m async for _, m in gapless.GaplessConsumer.getmany(consumer, 1.0)]
    return asyncio.run(run())


def test_a_partition_paused_mid_batch_is_fetched_again_from_its_first_undelivered() -> None:
    def pause_b_after_5(consumer: Any, tp: TP, offset: int) -> None:
        if (tp, offset) == (B, 6):
            consumer.active.discard(B)

    consumer, seeks = _fetching([(A, 1), (B, 5), (A, 2), (B, 6), (B, 7), (A, 3)],
                                pause_b_after_5)
    assert _delivered(consumer) == [(A, 1), (B, 5), (A, 2), (A, 3)]
    assert seeks == [(B, 6)]


def test_a_rebalance_mid_batch_sends_each_partition_back_to_its_undelivered() -> None:
    def rebalance_at_a2(consumer: Any, tp: TP, offset: int) -> None:
        if (tp, offset) == (A, 2):
            consumer.app.consumer_generation_id = 2

    consumer, seeks = _fetching([(A, 1), (B, 5), (A, 2), (B, 6), (A, 3)], rebalance_at_a2)
    assert _delivered(consumer) == [(A, 1), (B, 5)]
    assert seeks == [(A, 2), (B, 6)]


def _acking(committed: int | None, acked: list[int], topic: str) -> tuple[Any, TP]:
    tp = TP(topic, 1)
    consumer: Any = gapless.GaplessConsumer.__new__(gapless.GaplessConsumer)
    consumer._committed_offset = defaultdict(lambda: None, {tp: committed})
    consumer._acked = defaultdict(list, {tp: list(acked)})
    consumer._acked_index = defaultdict(set, {tp: set(acked)})
    consumer._gap = defaultdict(IntervalTree)
    return consumer, tp


def test_no_commit_past_a_record_at_the_committed_offset_that_was_never_acked() -> None:
    """Committed 233 (the next record to read); 234 and 235 acked, 233 never delivered:
    Faust would commit 236. Ours commits nothing until 233 is acked."""
    consumer, tp = _acking(233, [234, 235], REQUESTS_INTERACTIVE.name)
    assert gapless.GaplessConsumer._new_offset(consumer, tp) is None
    consumer._acked[tp].insert(0, 233)
    consumer._acked_index[tp].add(233)
    assert gapless.GaplessConsumer._new_offset(consumer, tp) == 236


def test_faust_commits_past_it_on_a_compacted_topic_as_before() -> None:
    consumer, tp = _acking(233, [234, 235], CONTROL_FLAGS.name)
    assert gapless.GaplessConsumer._new_offset(consumer, tp) == 236  # Faust's own rule
