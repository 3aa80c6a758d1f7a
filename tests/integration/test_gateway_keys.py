"""API keys that expire and rotate, on the real gateway and Redis, seen by OpenAI's own
client: a rotated key keeps working through its grace period beside its replacement, then
is refused as expired (401, saying when); a key past its lifetime is refused the same way."""

from __future__ import annotations

import asyncio
import time
import uuid

import openai
import pytest
import redis.asyncio as aioredis
from typer.testing import CliRunner

from clawstream.cli.app import app
from clawstream.config import Settings
from clawstream.deploy.local.wait import wait_for
from clawstream.gateway.apikeys import KeyStore
from tests.integration.test_gateway import client

pytestmark = pytest.mark.integration


def keys(*args: str) -> str:
    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["keys", *args])
    assert result.exit_code == 0, result.output
    return result.output


def works(settings: Settings, key: str) -> bool:
    return bool(client(settings, key, max_retries=0).models.list().data)


def refused_as_expired(settings: Settings, key: str) -> bool:
    try:
        works(settings, key)
    except openai.AuthenticationError as exc:
        assert "expired at" in str(exc), exc
        return True
    return False


def test_a_rotated_key_works_beside_its_replacement_until_the_grace_ends(
        gateway: Settings) -> None:
    tenant = f"kr-{uuid.uuid4().hex[:6]}"
    created = keys("create", "--tenant", tenant, "--name", "svc", "--expires-in", "30d")
    old = created.strip().splitlines()[-1]
    key_id = old.split("_")[1]
    assert works(gateway, old)
    rotated = keys("rotate", key_id, "--tenant", tenant, "--grace", "2s")
    new = rotated.strip().splitlines()[-1]
    assert new != old and works(gateway, new) and works(gateway, old)
    listed = keys("list", "--tenant", tenant)
    assert listed.count("svc") == 2
    # The grace period is a time: the old key is refused once it has passed, not before.
    assert wait_for(lambda: refused_as_expired(gateway, old), timeout=30) is None
    assert works(gateway, new)
    assert "(expired)" in keys("list", "--tenant", tenant)


def test_a_key_past_its_lifetime_is_refused_saying_so(gateway: Settings) -> None:
    tenant = f"ke-{uuid.uuid4().hex[:6]}"
    a_day_ago = int(time.time() * 1000) - 86_400_000

    async def create() -> str:
        redis = aioredis.Redis.from_url(gateway.redis_url)
        try:  # made a day ago with an hour to live
            return (await KeyStore(redis, clock=lambda: a_day_ago).create(
                tenant, "old", ttl_s=3600))[1]
        finally:
            await redis.aclose()

    assert refused_as_expired(gateway, asyncio.run(create()))
    result = CliRunner().invoke(app, ["keys", "create", "--tenant", tenant,
                                      "--expires-in", "soon"])
    assert result.exit_code != 0 and "--expires-in" in result.output
