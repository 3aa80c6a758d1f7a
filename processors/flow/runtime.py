"""Per-process singletons of flow control: the flag reader and Redis. Kept here so the
shared processor modules only add a few calls."""

from __future__ import annotations

from functools import lru_cache

import redis.asyncio as aioredis

from clawstream.config import get_settings
from clawstream.processors.flow.flags import FlagReader, FlagView


@lru_cache(maxsize=1)
def flag_reader() -> FlagReader:
    settings = get_settings()
    return FlagReader(settings.bootstrap_servers, settings.flag_poll_s).start()


def flags() -> FlagView:
    """The current flags of this process (started on first use, then followed)."""
    return flag_reader().view()


@lru_cache(maxsize=1)
def redis() -> aioredis.Redis:
    return aioredis.Redis.from_url(get_settings().redis_url)
