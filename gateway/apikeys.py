"""API keys per tenant, stored hashed in Redis.

A key is ``csk_<id>_<secret>``: the id is public (``keys list`` shows it, ``keys revoke``
takes it), the secret is 256 random bits. Redis holds only the SHA-256 of the whole key: a
fast hash is enough for a random 256-bit secret (a slow password hash protects guessable
secrets; these are not), and it lets every request be checked in one lookup. The key is
shown once, at creation.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from clawstream.processors.keys import api_key_id_key, api_key_key, tenant_api_keys_key

TENANT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
PREFIX = "csk_"


@dataclass(frozen=True)
class KeyInfo:
    key_id: str
    tenant_id: str
    name: str
    created_at_ms: int


def check_tenant(tenant_id: str) -> str:
    """Tenant names go into Kafka records and Redis keys: lower-case, digits, ``_``, ``-``."""
    if not TENANT_PATTERN.fullmatch(tenant_id):
        raise ValueError(f"invalid tenant {tenant_id!r}: use 1-63 of a-z, 0-9, '_', '-'")
    return tenant_id


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """(key id, full key)."""
    key_id = secrets.token_hex(6)
    return key_id, f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


class KeyStore:
    """Create, list, revoke and look up keys; each a few Redis commands."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis

    async def create(self, tenant_id: str, name: str = "") -> tuple[KeyInfo, str]:
        check_tenant(tenant_id)
        key_id, key = new_key()
        info = KeyInfo(key_id, tenant_id, name, int(time.time() * 1000))
        digest = hash_key(key)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(api_key_key(digest), mapping={
                "key_id": key_id, "tenant_id": tenant_id, "name": name,
                "created_at_ms": info.created_at_ms})
            pipe.set(api_key_id_key(key_id), digest)
            pipe.sadd(tenant_api_keys_key(tenant_id), key_id)
            await pipe.execute()
        return info, key

    async def lookup(self, key: str) -> KeyInfo | None:
        """The key's record, or None for an unknown or revoked key."""
        if not key.startswith(PREFIX) or len(key) > 128:
            return None
        raw = await self._redis.hgetall(api_key_key(hash_key(key)))
        return _info(raw)

    async def list(self, tenant_id: str) -> list[KeyInfo]:
        ids = sorted(await self._redis.smembers(tenant_api_keys_key(tenant_id)))
        infos = []
        for key_id in ids:
            digest = await self._redis.get(api_key_id_key(_text(key_id)))
            info = _info(await self._redis.hgetall(api_key_key(_text(digest)))) if digest \
                else None
            if info is not None:
                infos.append(info)
        return sorted(infos, key=lambda i: i.created_at_ms)

    async def revoke(self, tenant_id: str, key_id: str) -> bool:
        """Delete the key; False if the tenant has no key with that id."""
        digest = await self._redis.get(api_key_id_key(key_id))
        if digest is None:
            return False
        info = _info(await self._redis.hgetall(api_key_key(_text(digest))))
        if info is None or info.tenant_id != tenant_id:
            return False
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(api_key_key(_text(digest)), api_key_id_key(key_id))
            pipe.srem(tenant_api_keys_key(tenant_id), key_id)
            await pipe.execute()
        return True


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _info(raw: Mapping[Any, Any]) -> KeyInfo | None:
    if not raw:
        return None
    fields = {_text(k): _text(v) for k, v in raw.items()}
    return KeyInfo(fields["key_id"], fields["tenant_id"], fields.get("name", ""),
                   int(fields.get("created_at_ms", "0")))


class CachedKeys:
    """Per-process cache of lookups (hits and misses) for ``ttl_s``: one Redis round trip
    per key and window instead of per request; a revocation takes effect within ``ttl_s``."""

    def __init__(self, store: KeyStore, ttl_s: float, max_entries: int = 10_000) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._max = max_entries
        self._cache: dict[str, tuple[float, KeyInfo | None]] = {}

    async def lookup(self, key: str) -> KeyInfo | None:
        now = time.monotonic()
        digest = hash_key(key)
        hit = self._cache.get(digest)
        if hit is not None and now - hit[0] < self._ttl_s:
            return hit[1]
        info = await self._store.lookup(key)
        if len(self._cache) >= self._max:
            self._cache.clear()
        self._cache[digest] = (now, info)
        return info
