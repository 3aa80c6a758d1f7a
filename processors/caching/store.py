"""Redis with a cache's failure mode: any error or slow answer is a miss, never a failure.

Every operation has a short socket timeout and no client-side retries (a cache that waits
for a sick Redis is slower than no cache); a failure is logged, counted, and recorded on
the step's report, and the caller carries on computing the value itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from clawstream.processors.caching.report import current

log = logging.getLogger(__name__)
FAILURES = (aioredis.RedisError, OSError, asyncio.TimeoutError)


class CacheStore:
    """JSON values in Redis under keys built by ``clawstream.processors.keys``."""

    def __init__(self, url: str, timeout_s: float = 0.25) -> None:
        self.redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0))

    def _failed(self, layer: str, op: str, exc: BaseException) -> None:
        log.warning("cache %s %s failed, treated as a miss: %s", layer, op, exc)
        current().fault(layer, op, exc)

    async def get(self, layer: str, key: str) -> Any | None:
        [value] = await self.mget(layer, [key])
        return value

    async def mget(self, layer: str, keys: Sequence[str]) -> list[Any | None]:
        """One round trip for many keys; all misses if Redis fails."""
        if not keys:
            return []
        try:
            raw = await self.redis.mget(list(keys))
        except FAILURES as exc:
            self._failed(layer, "get", exc)
            return [None] * len(keys)
        return [json.loads(v) if v is not None else None for v in raw]

    async def put(self, layer: str, key: str, value: Any, ttl_s: float | None) -> None:
        await self.put_many(layer, {key: value}, ttl_s)

    async def put_many(self, layer: str, items: dict[str, Any], ttl_s: float | None) -> None:
        """One pipeline for many keys; ``ttl_s`` None = no expiry. Failures are swallowed."""
        if not items:
            return
        px = max(1, int(ttl_s * 1000)) if ttl_s is not None else None
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key, value in items.items():
                    pipe.set(key, json.dumps(value), px=px)
                await pipe.execute()
        except FAILURES as exc:
            self._failed(layer, "set", exc)

    async def aclose(self) -> None:
        await self.redis.aclose()
