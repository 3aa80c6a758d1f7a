"""The tokens-per-second limiter in front of inference: one Redis bucket per model pool.

Admission charges the step's *estimated* tokens (prompt + max output) to its pool's bucket;
when the result reports the actual usage, the difference is refunded (or charged), so over
a window the pool receives its configured tokens/s of *actual* work (per replica of the
deployment serving it, as ``running`` last counted them). The bucket lives in
Redis, so every dispatcher replica draws from the same rate. Each admitted step is logged
(capped list per pool) with its admission time, estimate, actual usage and settle time:
the measured tokens/s of the tests and the benchmark are computed from that log.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import redis.asyncio as aioredis

from clawstream import metrics
from clawstream.config import Settings
from clawstream.processors.failopen import fail_open
from clawstream.processors.flow.buckets import TokenBuckets
from clawstream.processors.flow.flags import FlagView
from clawstream.processors.flow.limits import record_tenant_usage
from clawstream.processors.flow.pools import pool_rate, smallest_pool
from clawstream.processors.flow.scheduler import Pending
from clawstream.processors.keys import admissions_key, bucket_key
from clawstream.schemas.records import StepResult, empty_usage

ADMISSION_LOG_MAX = 5000


class PoolAdmission:
    def __init__(self, redis: aioredis.Redis, settings: Settings,
                 flags: Callable[[], FlagView],
                 running: Callable[[], Mapping[str, int]] = dict) -> None:
        self._redis = redis
        self._buckets = TokenBuckets(redis)
        self._settings = settings
        self._flags = flags
        self._running = running

    def _rate(self, pool: str) -> tuple[float, float]:
        rate = pool_rate(pool, self._settings, self._flags(), self._running())
        return rate, max(1.0, rate * self._settings.pool_burst_s)

    async def admit(self, item: Pending) -> float:
        flags = self._flags()
        if flags.pool_killed(item.pool):
            # Switched off while the step waited: the smallest pool still on takes it.
            other = smallest_pool(self._settings, flags, exclude=item.pool)
            if other is not None:
                item.extra["rerouted_from"] = item.pool
                item.pool = other
        rate, capacity = self._rate(item.pool)
        # A batch step leaves part of the bucket to interactive steps, so a flood cannot make
        # an interactive step wait for the refill.
        reserve = capacity * self._settings.batch_token_reserve if item.lane == "batch" else 0
        take = await fail_open("pool_admission", self._buckets.take(
            bucket_key("pool", item.pool), rate, capacity, item.cost, reserve), None)
        if take is None:
            return 0.0
        metrics.POOL_RATE.labels(item.pool).set(rate)
        metrics.POOL_LEVEL.labels(item.pool).set(take.level)
        if not take.allowed:
            metrics.LIMITER_REFUSALS.labels(item.pool).inc()
            return take.retry_after_s
        item.extra["admitted_at_ms"] = take.at_ms
        item.extra["rate"] = rate
        return 0.0

    async def release(self, item: Pending, result: StepResult | None) -> None:
        await fail_open("pool_release", self._release(item, result), None)

    async def _release(self, item: Pending, result: StepResult | None) -> None:
        rate, capacity = self._rate(item.pool)
        usage = result["usage"] if result else empty_usage()
        actual = usage["prompt_tokens"] + usage["completion_tokens"]
        settle = await self._buckets.adjust(bucket_key("pool", item.pool), rate, capacity,
                                            actual - item.cost)
        if result is None:
            return
        entry = {"step_id": item.cmd["step_id"], "lane": item.lane, "tenant": item.tenant,
                 "pool": item.pool, "estimate": item.cost, "actual": actual,
                 "admitted_at_ms": item.extra.get("admitted_at_ms"),
                 "settled_at_ms": settle.at_ms, "rate": item.extra.get("rate")}
        key = admissions_key(item.pool)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.rpush(key, json.dumps(entry))
            pipe.ltrim(key, -ADMISSION_LOG_MAX, -1)
            await pipe.execute()
        await record_tenant_usage(self._redis, self._settings, item.tenant, actual,
                                  usage["cost_usd"], time.time())


def measured_rate(entries: list[dict[str, Any]]) -> float:
    """Achieved tokens/s from an admission log while the limiter was the bottleneck.

    Between the 2nd and the last admission the bucket supplied exactly rate x time (it
    starts and ends each wait just full enough for the next step), and each step admitted
    in between was charged its actual usage if it had settled by the last admission, else
    its estimate. The first admission is left out: it drew on the initial burst."""
    ordered = sorted(entries, key=lambda e: e["admitted_at_ms"])
    if len(ordered) < 3:
        raise ValueError("need at least 3 admissions to measure a rate")
    start, end = ordered[1]["admitted_at_ms"], ordered[-1]["admitted_at_ms"]
    charged = sum(e["actual"] if e["settled_at_ms"] <= end else e["estimate"]
                  for e in ordered[1:-1])
    return charged / ((end - start) / 1000.0)


def excess_over_rate(entries: list[dict[str, Any]], rate: float, capacity: float) -> float:
    """The most tokens the log's admissions took beyond what the bucket could supply: 0
    (or less) when the limiter held its rate at every admission.

    An admission needs the step's estimate in the bucket (its whole capacity, for a step
    that costs more), and the bucket holds at most its capacity at the first admission
    plus ``rate`` x the time since, less what the earlier admissions were charged by then
    (their actual usage when settled before it, else their estimate).
    Unlike :func:`measured_rate` this holds however late the dispatcher came for its
    tokens: a late wake-up leaves a full bucket overflowing, which loses tokens (a lower
    average) but never grants more."""
    ordered = sorted(entries, key=lambda e: e["admitted_at_ms"])
    if not ordered:
        return 0.0
    start = ordered[0]["admitted_at_ms"]
    worst = float("-inf")
    for j, entry in enumerate(ordered):
        at = entry["admitted_at_ms"]
        charged = sum(e["actual"] if e["settled_at_ms"] <= at else e["estimate"]
                      for e in ordered[:j])
        needed = min(entry["estimate"], capacity)
        worst = max(worst, charged + needed - capacity - rate * (at - start) / 1000.0)
    return worst
