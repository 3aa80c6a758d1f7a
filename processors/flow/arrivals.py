"""Entrance limits counted at each request's arrival time, in Redis (one Lua script).

Why arrival time: a request is charged when it arrived at our system (its
``created_at_ms``), not when the coordinator handles it. Charged when handled, the backlog
that piles up in Kafka while a worker or the broker is down came out as one burst and was
rejected (11 requests of a client sending 6/s, over a 20/s tenant limit, after a broker
outage): an outage on our side turned into the client's fault.

Why a window log instead of a token bucket: after an outage the partitions catch up at
their own speeds, so one client's requests are handled out of arrival order. A bucket
only moves forward in time; an arrival older than the bucket's clock gets no refill and
the backlog of a lagging partition is rejected again. The log keeps each admitted
request's arrival time (a sorted set, score = arrival ms, member = request id), and a
request is admitted when fewer than ``burst`` admitted requests arrived in the ``burst /
rate`` seconds up to its own arrival, whatever order they were handled in. Over time that
is ``rate`` requests/s with bursts of ``burst``, as the bucket was. The request id as
member makes a second check of the same request (a redelivery before its dedup entry was
written) count it once.

The arrival time is the client's clock, so it is bounded: never later than Redis' clock
plus ``clock_skew_s`` (a future time would open windows nobody has charged yet), never
earlier than the newest admitted arrival minus ``reorder_s`` (back-dating buys at most
that much). The log is trimmed to ``reorder_s`` + the window behind its newest entry, so
its size is bounded by what the limit admits in that time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import redis.asyncio as aioredis

_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local at = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local member = ARGV[4]
local skew = tonumber(ARGV[5])
local reorder = tonumber(ARGV[6])
at = math.min(at, now + skew)
local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
local front = at
if newest[2] ~= nil then front = math.max(front, tonumber(newest[2])) end
at = math.max(at, front - reorder)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (front - reorder - window))
local lo = '(' .. (at - window)
local count = redis.call('ZCOUNT', KEYS[1], lo, at)
if redis.call('ZSCORE', KEYS[1], member) then
  return {1, count, '0', tostring(at)}
end
if count < limit then
  redis.call('ZADD', KEYS[1], at, member)
  redis.call('PEXPIRE', KEYS[1], math.ceil(reorder + window + skew) + 60000)
  return {1, count + 1, '0', tostring(at)}
end
local oldest = redis.call('ZRANGEBYSCORE', KEYS[1], lo, at, 'WITHSCORES', 'LIMIT', 0, 1)
return {0, count, tostring(tonumber(oldest[2]) + window - at), tostring(at)}
"""


@dataclass(frozen=True)
class Admission:
    """The log's answer: ``retry_after_s`` is 0 when admitted, else when the window of the
    request's arrival has room again; ``arrived_ms`` is the arrival time it was counted at."""

    allowed: bool
    in_window: int
    retry_after_s: float
    arrived_ms: float


class ArrivalWindows:
    """Per-key arrival logs; rate and burst travel with each call, so a limit changed by a
    flag applies at the next request."""

    def __init__(self, redis: aioredis.Redis, clock_skew_s: float, reorder_s: float) -> None:
        self._script = redis.register_script(_SCRIPT)
        self._skew_ms, self._reorder_ms = clock_skew_s * 1000, reorder_s * 1000

    async def admit(self, key: str, request_id: str, arrived_ms: int, rate: float,
                    burst: float) -> Admission:
        """Admit ``request_id`` (arrived at ``arrived_ms``) unless ``burst`` admitted
        requests arrived in the ``burst / rate`` seconds up to it."""
        if rate <= 0 or burst <= 0:
            raise ValueError(f"arrival window {key}: rate and burst must be > 0")
        window_ms = burst / rate * 1000
        allowed, count, wait_ms, at = await self._script(
            keys=[key], args=[str(arrived_ms), repr(window_ms), repr(burst), request_id,
                              repr(self._skew_ms), repr(self._reorder_ms)])
        wait_s = max(0.0, float(wait_ms) / 1000)
        return Admission(bool(int(allowed)), int(count), math.ceil(wait_s * 1000) / 1000,
                         float(at))
