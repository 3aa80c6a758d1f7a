"""API keys per tenant, stored hashed in Redis, with an expiry.

A key is ``csk_<id>_<secret>``: the id is public (``keys list`` shows it, ``keys revoke``
takes it), the secret is 256 random bits. Redis holds only the SHA-256 of the whole key: a
fast hash is enough for a random 256-bit secret (a slow password hash protects guessable
secrets; these are not), and it lets every request be checked in one lookup. The key is
shown once, at creation.

Keys are short-lived by default (``CLAWSTREAM_GATEWAY_KEY_TTL_DAYS``, 90): a leaked key
stops working on its own. ``rotate`` hands out a new key and keeps the old one valid for a
grace period, so clients move over with no failed request. An expired key is refused with
its own reason (the gateway says when it expired); its record stays in Redis a week past
that, for the message, and then Redis deletes it.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from clawstream.processors.keys import api_key_id_key, api_key_key, tenant_api_keys_key

TENANT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
PREFIX = "csk_"


KEPT_AFTER_EXPIRY_MS = 7 * 24 * 3600 * 1000
"""How long an expired key's record stays, so its caller hears "expired", not "unknown"."""


@dataclass(frozen=True)
class KeyInfo:
    key_id: str
    tenant_id: str
    name: str
    created_at_ms: int
    expires_at_ms: int | None = None
    """None: never (a key made before expiry existed, or with a TTL of 0)."""

    def expired(self, now_ms: int) -> bool:
        return self.expires_at_ms is not None and now_ms >= self.expires_at_ms


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
    """Create, list, rotate, revoke and look up keys; each a few Redis commands.
    ``clock`` (epoch ms) is the store's time, given in tests."""

    def __init__(self, redis: aioredis.Redis,
                 clock: Callable[[], int] = lambda: int(time.time() * 1000)) -> None:
        self._redis = redis
        self._clock = clock

    async def create(self, tenant_id: str, name: str = "", ttl_s: float | None = None
                     ) -> tuple[KeyInfo, str]:
        """A new key; ``ttl_s`` None or 0: it never expires."""
        check_tenant(tenant_id)
        if ttl_s is not None and ttl_s < 0:
            raise ValueError(f"a key's lifetime must be positive, got {ttl_s} s")
        key_id, key = new_key()
        now = self._clock()
        info = KeyInfo(key_id, tenant_id, name, now,
                       now + int(ttl_s * 1000) if ttl_s else None)
        digest = hash_key(key)
        fields: dict[Any, str | int] = {"key_id": key_id, "tenant_id": tenant_id, "name": name,
                                        "created_at_ms": info.created_at_ms}
        if info.expires_at_ms is not None:
            fields["expires_at_ms"] = info.expires_at_ms
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(api_key_key(digest), mapping=fields)
            pipe.set(api_key_id_key(key_id), digest)
            pipe.sadd(tenant_api_keys_key(tenant_id), key_id)
            if info.expires_at_ms is not None:
                _forget_after_expiry(pipe, digest, key_id, info.expires_at_ms)
            await pipe.execute()
        return info, key

    async def rotate(self, tenant_id: str, key_id: str, grace_s: float,
                     ttl_s: float | None = None) -> tuple[KeyInfo, str] | None:
        """A new key with the old one's name; the old one stays valid for ``grace_s`` more
        (never longer than it had). None if the tenant has no key with that id."""
        found = await self._owned(tenant_id, key_id)
        if found is None:
            return None
        digest, old = found
        until = self._clock() + int(grace_s * 1000)
        if old.expires_at_ms is not None:
            until = min(until, old.expires_at_ms)
        created = await self.create(tenant_id, old.name, ttl_s)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(api_key_key(digest), "expires_at_ms", until)
            _forget_after_expiry(pipe, digest, key_id, until)
            await pipe.execute()
        return created

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
        found = await self._owned(tenant_id, key_id)
        if found is None:
            return False
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(api_key_key(found[0]), api_key_id_key(key_id))
            pipe.srem(tenant_api_keys_key(tenant_id), key_id)
            await pipe.execute()
        return True

    async def _owned(self, tenant_id: str, key_id: str) -> tuple[str, KeyInfo] | None:
        """The digest and record of the tenant's key ``key_id``."""
        digest = await self._redis.get(api_key_id_key(key_id))
        if digest is None:
            return None
        info = _info(await self._redis.hgetall(api_key_key(_text(digest))))
        if info is None or info.tenant_id != tenant_id:
            return None
        return _text(digest), info


def _forget_after_expiry(pipe: Any, digest: str, key_id: str, expires_at_ms: int) -> None:
    for name in (api_key_key(digest), api_key_id_key(key_id)):
        pipe.pexpireat(name, expires_at_ms + KEPT_AFTER_EXPIRY_MS)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _info(raw: Mapping[Any, Any]) -> KeyInfo | None:
    if not raw:
        return None
    fields = {_text(k): _text(v) for k, v in raw.items()}
    expires = fields.get("expires_at_ms")
    return KeyInfo(fields["key_id"], fields["tenant_id"], fields.get("name", ""),
                   int(fields.get("created_at_ms", "0")), int(expires) if expires else None)


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
