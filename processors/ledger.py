"""The side-effect ledger: a mutating tool call runs once per step idempotency key.

Before a mutating call the executor looks the key up: a recorded result is returned as is
(a redelivered command, a retry after a lost result, a re-issue after a timeout). After
the call it records the result, with no TTL (Redis evicts only keys with a TTL, and runs
with an append-only file). The window between the effect and its record (a crash right
after the call) is closed by passing the same key to the system the tool changes, which
is why :class:`clawstream.processors.tools.base.ToolContext` carries it.
"""

from __future__ import annotations

import json

import redis.asyncio as aioredis

from clawstream.processors.keys import ledger_key


class EffectLedger:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis

    async def recorded(self, step_id: str) -> str | None:
        raw = await self._redis.get(ledger_key(step_id))
        return None if raw is None else str(json.loads(raw)["output"])

    async def record(self, step_id: str, output: str, worker: str, at_ms: int) -> None:
        entry = json.dumps({"output": output, "worker": worker, "at_ms": at_ms})
        await self._redis.set(ledger_key(step_id), entry)
