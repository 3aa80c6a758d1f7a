"""The side-effect ledger: a mutating tool call runs once per step idempotency key.

Before a mutating call the executor *claims* the step: one atomic Redis script returns
the recorded result if the step was applied already (a redelivered command, a retry after a
lost result, a re-issue after a timeout), refuses while another execution holds an
unexpired claim (two executions of one step at the same moment: only one runs the effect),
or gives this execution a lease, renewed while it runs. After the call the result is
recorded, with no TTL (Redis evicts only keys with a TTL, and runs with an append-only
file), and the claim released. An execution that crashes holding a claim loses it within
one lease (``ledger_lease_s``); the window
between the effect and its record is closed by passing the same key to the system the
tool changes, which is why :class:`processors.tools.base.ToolContext` carries it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

import redis.asyncio as aioredis

from clawstream.processors.failopen import REDIS_DOWN
from clawstream.processors.keys import ledger_claim_key, ledger_key

log = logging.getLogger(__name__)

_CLAIM = """
local done = redis.call('GET', KEYS[1])
if done then return {'done', done} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {'claimed', ''} end
return {'busy', tostring(redis.call('PTTL', KEYS[2]))}
"""
_RECORD = """
redis.call('SET', KEYS[1], ARGV[2])
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class Claim:
    state: Literal["claimed", "done", "busy"]
    output: str | None = None
    """The recorded result, when ``done``."""
    retry_after_s: float = 0.0
    """How long the other execution's lease still runs, when ``busy``."""


class EffectLedger:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._claim = redis.register_script(_CLAIM)
        self._record = redis.register_script(_RECORD)
        self._release = redis.register_script(_RELEASE)
        self._renew = redis.register_script(_RENEW)

    async def claim(self, step_id: str, token: str, lease_s: float) -> Claim:
        state, value = await self._claim(keys=[ledger_key(step_id), ledger_claim_key(step_id)],
                                         args=[token, max(1, int(lease_s * 1000))])
        state = state.decode() if isinstance(state, bytes) else str(state)
        if state == "done":
            return Claim("done", output=str(json.loads(value)["output"]))
        if state == "busy":
            return Claim("busy", retry_after_s=max(0.05, int(value) / 1000))
        return Claim("claimed")

    async def record(self, step_id: str, token: str, output: str, worker: str,
                     at_ms: int) -> None:
        entry = json.dumps({"output": output, "worker": worker, "at_ms": at_ms})
        await self._record(keys=[ledger_key(step_id), ledger_claim_key(step_id)],
                           args=[token, entry])

    async def renew(self, step_id: str, token: str, lease_s: float) -> bool:
        """Extend this execution's lease; False if it no longer holds the claim."""
        return bool(await self._renew(keys=[ledger_claim_key(step_id)],
                                      args=[token, max(1, int(lease_s * 1000))]))

    @contextlib.asynccontextmanager
    async def holding(self, step_id: str, token: str, lease_s: float) -> AsyncIterator[None]:
        """Renew the lease every third of it while the body runs, so a live execution keeps
        its claim however long the tool takes, and a dead one loses it within ``lease_s``."""
        async def renew_forever() -> None:
            while True:
                await asyncio.sleep(lease_s / 3)
                try:
                    if not await self.renew(step_id, token, lease_s):
                        log.warning("step %s: ledger claim lost while running", step_id)
                        return
                except REDIS_DOWN as exc:
                    log.warning("step %s: ledger claim not renewed: %r", step_id, exc)

        renewer = asyncio.create_task(renew_forever())
        try:
            yield
        finally:
            renewer.cancel()

    async def release(self, step_id: str, token: str) -> None:
        """The call failed without an effect to record: the next attempt may claim at once."""
        await self._release(keys=[ledger_claim_key(step_id)], args=[token])
