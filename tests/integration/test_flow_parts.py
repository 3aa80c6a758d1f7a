"""Flow-control parts on the real Redis and Kafka of the test stack."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import redis.asyncio as aioredis

from clawstream.config import Settings
from clawstream.processors.flow.arrivals import ArrivalWindows
from clawstream.processors.flow.buckets import TokenBuckets
from clawstream.processors.flow.flags import FlagReader, read_flags, set_flag

pytestmark = pytest.mark.integration


def test_bucket_is_atomic_under_concurrent_takes(stack: Settings) -> None:
    async def scenario() -> list[tuple[bool, float]]:
        redis = aioredis.Redis.from_url(stack.redis_url)
        buckets = TokenBuckets(redis)
        key = f"test:bucket:{uuid.uuid4().hex}"
        takes = await asyncio.gather(*(buckets.take(key, rate=0.5, capacity=10)
                                       for _ in range(40)))
        refund = await buckets.adjust(key, rate=0.5, capacity=10, delta=-3)
        await redis.aclose()
        return [(t.allowed, t.retry_after_s) for t in takes] + [(True, refund.level)]

    *takes, (_, level_after_refund) = asyncio.run(scenario())
    assert sum(allowed for allowed, _ in takes) == 10
    assert all(wait > 0 for allowed, wait in takes if not allowed), "rejections need a hint"
    assert 2.9 < level_after_refund <= 3.2


def _admit_all(stack: Settings, arrivals: list[tuple[str, int]], rate: float, burst: float
               ) -> list[bool]:
    """Check (request id, arrival ms) pairs against one fresh log, in the order given."""
    async def scenario() -> list[bool]:
        redis = aioredis.Redis.from_url(stack.redis_url)
        windows = ArrivalWindows(redis, clock_skew_s=5, reorder_s=120)
        key = f"test:arrivals:{uuid.uuid4().hex}"
        got = [(await windows.admit(key, rid, at, rate, burst)).allowed for rid, at in arrivals]
        await redis.aclose()
        return got

    return asyncio.run(scenario())


def test_a_backlog_handled_in_a_burst_and_out_of_order_is_counted_at_its_arrival(
        stack: Settings) -> None:
    now = int(time.time() * 1000)
    # 60 s of a client sending 6/s, handled at once after an outage, one partition after
    # another (4 partitions): the worst order the catch-up can take.
    sent = [(f"r{i}", now - 60_000 + i * 1000 // 6) for i in range(360)]
    by_partition = [sent[p::4] for p in range(4)]
    admitted = _admit_all(stack, [a for part in by_partition for a in part], 20, 40)
    assert all(admitted)


def test_a_client_over_its_rate_is_still_limited_and_a_repeat_counts_once(
        stack: Settings) -> None:
    now = int(time.time() * 1000)
    sent = [(f"r{i}", now - 10_000 + i * 1000 // 30) for i in range(300)]  # 30/s for 10 s
    admitted = _admit_all(stack, sent + sent[:5], 10, 20)
    assert 100 <= sum(admitted[:300]) <= 120  # 10/s over 10 s, plus the burst
    assert admitted[300:] == admitted[:5]  # the same request checked again: no new charge


def test_a_clock_ahead_cannot_book_future_windows(stack: Settings) -> None:
    far = int(time.time() * 1000) + 3_600_000
    # An hour ahead counts at Redis' clock + 5 s: all in one window, so the burst holds.
    admitted = _admit_all(stack, [(f"r{i}", far + i) for i in range(30)], 10, 20)
    assert sum(admitted) == 20


def test_flag_change_reaches_a_running_reader(stack: Settings) -> None:
    reader = FlagReader(stack.bootstrap_servers, poll_s=0.1).start()
    name = f"kill.tool.t{uuid.uuid4().hex[:6]}"
    try:
        set_flag(stack.bootstrap_servers, name, "on", by="test")
        tool = name.removeprefix("kill.tool.")
        assert reader.wait_until(lambda flags: flags.tool_killed(tool), 2.0), \
            "flag not seen within 2 s"
        set_flag(stack.bootstrap_servers, name, "off", by="test")
        assert read_flags(stack.bootstrap_servers)[name]["value"] == "off"
    finally:
        reader.stop()
