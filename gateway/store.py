"""The gateway's records in Redis: requests (who owns them, what was published, the
answer), their event histories, idempotency keys and conversations' request lists.

All of it can be rebuilt (the topics are the source of truth) and all of it expires after
``gateway_record_ttl_s``: it exists so that a late reader (another gateway process, one
restarted after a crash, a client polling by id) finds an answer without re-reading a topic.
"""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis

from clawstream.processors.keys import (
    conversation_requests_key,
    gateway_idempotency_key,
    request_events_key,
    request_record_key,
)

Record = dict[str, Any]
Pipeline = Any
"""A sync or async Redis pipeline: the writes are only queued here."""
MAX_CONVERSATION_REQUESTS = 1000
"""Requests listed per conversation (the newest)."""


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class RequestStore:
    def __init__(self, redis: aioredis.Redis, ttl_s: int) -> None:
        self._redis = redis
        self.ttl_s = ttl_s

    # ------------------------------------------------------------------ idempotency
    async def claim(self, tenant_id: str, key: str, request_id: str, fingerprint: str
                    ) -> tuple[str, str] | None:
        """Claim ``key`` for a new request; if it is taken, (request id, fingerprint) of the
        request that holds it."""
        redis_key = gateway_idempotency_key(tenant_id, key)
        value = f"{request_id} {fingerprint}"
        if await self._redis.set(redis_key, value, nx=True, ex=self.ttl_s):
            return None
        held = _text(await self._redis.get(redis_key))
        if held is None:  # expired in between: claim again
            return await self.claim(tenant_id, key, request_id, fingerprint)
        first, _, print_ = held.partition(" ")
        return first, print_

    async def reclaim(self, tenant_id: str, key: str, request_id: str, fingerprint: str
                      ) -> None:
        """The key now belongs to a new request (the earlier one was rejected: the
        client's retry under the same key is a new attempt, as the coordinator sees it)."""
        await self._redis.set(gateway_idempotency_key(tenant_id, key),
                              f"{request_id} {fingerprint}", ex=self.ttl_s)

    async def release(self, tenant_id: str, key: str) -> None:
        await self._redis.delete(gateway_idempotency_key(tenant_id, key))

    # ------------------------------------------------------------------ requests
    async def create(self, request: Record, conversation: str) -> None:
        """The request's record before it is published (so a crash after publishing leaves
        a record), and its place in the conversation."""
        key = request_record_key(request["request_id"])
        conv_key = conversation_requests_key(request["conversation_id"])
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hset(key, mapping={
                "tenant_id": request["tenant_id"], "conversation": conversation,
                "conversation_id": request["conversation_id"], "agent": request["agent"],
                "created_at_ms": request["created_at_ms"],
                "request": json.dumps(request)})
            pipe.expire(key, self.ttl_s)
            pipe.rpush(conv_key, request["request_id"])
            pipe.ltrim(conv_key, -MAX_CONVERSATION_REQUESTS, -1)
            pipe.expire(conv_key, self.ttl_s)
            await pipe.execute()

    async def mark_published(self, request_id: str) -> None:
        await self._redis.hset(request_record_key(request_id), "published", "1")

    async def discard(self, request: Record) -> None:
        """Undo :meth:`create` for a request the broker did not take."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.delete(request_record_key(request["request_id"]))
            pipe.lrem(conversation_requests_key(request["conversation_id"]), 0,
                      request["request_id"])
            await pipe.execute()

    async def file_answer(self, answer: Record) -> None:
        """File an answer this process just received, as the recorder will: a client that
        got it here and asks again by id finds it, whatever the recorder's lag."""
        async with self._redis.pipeline(transaction=False) as pipe:
            record_answer(pipe, answer, self.ttl_s)
            await pipe.execute()

    async def get(self, request_id: str) -> Record | None:
        raw = await self._redis.hgetall(request_record_key(request_id))
        return _record(request_id, raw)

    async def get_many(self, request_ids: list[str]) -> list[Record]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for request_id in request_ids:
                pipe.hgetall(request_record_key(request_id))
            raws = await pipe.execute()
        return [r for r in (_record(i, raw) for i, raw in zip(request_ids, raws, strict=True))
                if r is not None]

    async def events(self, request_id: str) -> list[Record]:
        raw = await self._redis.lrange(request_events_key(request_id), 0, -1)
        return [json.loads(item) for item in raw]

    async def conversation(self, conversation_id: str) -> list[str]:
        raw = await self._redis.lrange(conversation_requests_key(conversation_id), 0, -1)
        return [str(_text(item)) for item in raw]


def _record(request_id: str, raw: dict[Any, Any]) -> Record | None:
    if not raw:
        return None
    fields = {str(_text(k)): _text(v) for k, v in raw.items()}
    if "tenant_id" not in fields:
        return None
    answer = json.loads(fields["answer"] or "null") if fields.get("answer") else None
    request = json.loads(fields["request"] or "null") if fields.get("request") else None
    status = answer["status"] if answer else ("running" if fields.get("running_at_ms")
                                              else "accepted")
    return {"request_id": request_id, "tenant_id": fields["tenant_id"],
            "conversation": fields.get("conversation"),
            "conversation_id": fields.get("conversation_id"), "agent": fields.get("agent"),
            "created_at_ms": int(fields.get("created_at_ms") or 0), "status": status,
            "published": fields.get("published") == "1", "request": request,
            "answer": answer}


def record_answer(pipe: Pipeline, answer: Record, ttl_s: int) -> None:
    """Queue the writes that file an answer (the recorder's part)."""
    key = request_record_key(answer["request_id"])
    pipe.hset(key, mapping={"tenant_id": answer["tenant_id"],
                            "conversation_id": answer["conversation_id"],
                            "agent": answer["agent"],
                            "created_at_ms": answer["created_at_ms"],
                            "answer": json.dumps(answer)})
    pipe.expire(key, ttl_s)


def record_event(pipe: Pipeline, event: Record, ttl_s: int) -> None:
    """Queue the writes that file a timeline event; the first one marks the request running."""
    request_id = event["request_id"]
    key = request_events_key(request_id)
    pipe.rpush(key, json.dumps(event))
    pipe.expire(key, ttl_s)
    if event["event_type"] == "request_received":
        pipe.hsetnx(request_record_key(request_id), "running_at_ms", event["at_ms"])
        pipe.expire(request_record_key(request_id), ttl_s)
