"""Token buckets in Redis, atomic through one Lua script, shared by every replica.

Why Lua: read-refill-take must be one step or two replicas both see the same tokens; the
script also reads Redis' own clock (``TIME``), so replicas with skewed clocks agree on the
refill. Why one script for both directions: the tokens/s limiter charges an *estimate*
at admission and reconciles with the actual usage afterwards (a refund, or a debt that
may take the level below zero). Entrance limits count requests at their arrival time
instead, in a log that tolerates out-of-order handling (:mod:`arrivals`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import redis.asyncio as aioredis

_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local rate = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local reserve = tonumber(ARGV[5])
local state = redis.call('HMGET', KEYS[1], 'level', 'ts')
local level = tonumber(state[1])
local ts = tonumber(state[2])
if level == nil or ts == nil then level = cap; ts = now end
level = math.min(cap, level + math.max(0, now - ts) * rate / 1000.0)
local allowed = 1
local wait_ms = 0
if ARGV[4] == 'take' then
  local need = math.min(cost + reserve, cap)
  if level >= need then
    level = level - cost
  else
    allowed = 0
    wait_ms = (need - level) * 1000.0 / rate
  end
else
  level = math.min(cap, level - cost)
end
local lvl = string.format('%.6f', level)
redis.call('HSET', KEYS[1], 'level', lvl, 'ts', string.format('%.3f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(cap * 1000.0 / rate) + 60000)
return {allowed, lvl, string.format('%.3f', wait_ms), string.format('%.3f', now)}
"""


@dataclass(frozen=True)
class Take:
    """The bucket's answer: ``retry_after_s`` is 0 when allowed, else when to come back."""

    allowed: bool
    level: float
    retry_after_s: float
    at_ms: float


class TokenBuckets:
    """Buckets addressed by Redis key; rate and capacity travel with each call, so a limit
    changed by a flag applies at the next call without resetting the bucket."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._script = redis.register_script(_SCRIPT)

    async def _call(self, key: str, rate: float, capacity: float, cost: float, mode: str,
                    reserve: float = 0.0) -> Take:
        if rate <= 0 or capacity <= 0:
            raise ValueError(f"bucket {key}: rate and capacity must be > 0")
        allowed, level, wait_ms, now = await self._script(
            keys=[key], args=[repr(rate), repr(capacity), repr(cost), mode, repr(reserve)])
        wait_s = float(wait_ms) / 1000.0
        return Take(bool(int(allowed)), float(level), math.ceil(wait_s * 1000) / 1000,
                    float(now))

    async def take(self, key: str, rate: float, capacity: float, cost: float = 1.0,
                   reserve: float = 0.0) -> Take:
        """Take ``cost`` tokens if the bucket holds them and ``reserve`` more (or is full,
        for a cost above its capacity, which then goes negative and is repaid by later
        refill). The reserve is what a lower-priority caller must leave for others."""
        return await self._call(key, rate, capacity, cost, "take", reserve)

    async def adjust(self, key: str, rate: float, capacity: float, delta: float) -> Take:
        """Charge ``delta`` more tokens (negative: refund) without asking; reconciliation."""
        return await self._call(key, rate, capacity, delta, "adjust")
