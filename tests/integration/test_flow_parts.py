"""Flow-control parts on the real Redis and Kafka of the test stack."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

from clawstream.config import Settings
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
