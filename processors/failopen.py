"""Redis down: which checks let work through instead of stopping it.

Caches, rate limits, the tenant spend window and the recall archive share one Redis. A
Redis outage must not become a full outage (issue 4: requests are still answered), so the
checks that only *limit* or *enrich* work fail open: the request passes, the check is
skipped, a warning is logged and ``clawstream_redis_fail_open_total{check}`` counts it.
The side-effect ledger is the exception: it fails closed (a mutating step errors and is
retried), since letting it through could repeat a side effect.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TypeVar

from redis.exceptions import RedisError

from clawstream.metrics import REDIS_FAIL_OPEN as FAILED_OPEN

log = logging.getLogger(__name__)
T = TypeVar("T")
REDIS_DOWN = (RedisError, OSError, asyncio.TimeoutError)


async def fail_open(check: str, call: Awaitable[T], default: T) -> T:
    """``await call``, or ``default`` (the let-it-through answer) if Redis fails."""
    try:
        return await call
    except REDIS_DOWN as exc:
        log.warning("redis unavailable, %s skipped (fail open): %s", check, exc)
        FAILED_OPEN.labels(check).inc()
        return default
