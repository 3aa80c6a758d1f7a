"""The gateway's one path for a request, shared by the native API and the OpenAI edge:
check, publish once (idempotency), watch, wait; and the mapping of answers to errors."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from starlette.background import BackgroundTask

from clawstream.config import Settings
from clawstream.gateway.apikeys import CachedKeys, KeyInfo, KeyStore
from clawstream.gateway.errors import ApiError, not_found, overloaded, rate_limited
from clawstream.gateway.index import AnswerIndex, Watch, is_answer, is_delta
from clawstream.gateway.pressure import RequestLag
from clawstream.gateway.recorder import Recorder
from clawstream.gateway.store import RequestStore
from clawstream.processors.keys import short_hash, tenant_conversation_id
from clawstream.processors.registry import load_registry
from clawstream.schemas.names import AGENT_REQUEST
from clawstream.schemas.records import FunctionSpec, Message
from clawstream.streams.publisher import AsyncPublisher, PublishError, new_request
from clawstream.streams.topics import request_topic
from clawstream.streams.tracecontext import HEADER, parse

Record = dict[str, Any]
REPUBLISH_AFTER_S = 5.0
"""A replayed request whose record says it never reached the broker (the gateway died in
between) is published again after this long; the coordinator's dedup makes that safe."""
STREAM_OPTION = "stream"
"""Set on a request whose client streams: its model steps publish deltas."""
RATE_KINDS = ("user_rate_limit", "tenant_rate_limit", "tenant_budget")


class WaitTimeout(Exception):
    """The request's deadline (plus grace) passed with no answer here."""


@dataclass
class Ask:
    """A request as the edge understood it, before it becomes an AgentRequest."""

    tenant_id: str
    user_id: str
    agent: str
    text: str
    conversation: str | None = None
    lane: str = "interactive"
    options: dict[str, str] = field(default_factory=dict)
    deadline_s: float | None = None
    idempotency_key: str | None = None
    messages: list[Message] = field(default_factory=list)
    """A governed model call's chat, sent to the model as it is."""
    tools: list[FunctionSpec] = field(default_factory=list)
    traceparent: str | None = None
    """The caller's W3C ``traceparent``: its trace id becomes the request's ``trace_id``."""

    def fingerprint(self) -> str:
        """What must match when an Idempotency-Key comes again (streaming or not is how
        the client reads the answer, not another request)."""
        options = {k: v for k, v in self.options.items() if k != STREAM_OPTION}
        return short_hash({"agent": self.agent, "text": self.text, "lane": self.lane,
                           "conversation": self.conversation, "options": options,
                           "messages": self.messages, "tools": self.tools})


@dataclass
class Accepted:
    request: Record
    conversation: str
    replayed: bool
    watch: Watch | None
    answer: Record | None = None

    @property
    def request_id(self) -> str:
        return str(self.request["request_id"])


class Gateway:
    """Everything a request handler needs, built once per process (the app's lifespan)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # A Redis restart leaves the pool's connections dead, and redis-py does not retry
        # them: the first request after it was refused 503. A dead connection never ran the
        # command, so trying again on a fresh one is safe (timeouts are not retried).
        self.redis = aioredis.Redis.from_url(
            settings.redis_url, retry=Retry(ExponentialBackoff(cap=0.2, base=0.01), 2),
            retry_on_error=[RedisConnectionError])
        self.keys = CachedKeys(KeyStore(self.redis), settings.gateway_key_cache_s)
        self.store = RequestStore(self.redis, settings.gateway_record_ttl_s)
        self.index = AnswerIndex(settings.bootstrap_servers)
        self.recorder = Recorder(settings)
        self.lag = RequestLag(settings)
        self.publisher: AsyncPublisher | None = None
        self.registry = load_registry(settings)
        self.ready = False

    async def start(self) -> None:
        self.publisher = AsyncPublisher(self.settings.bootstrap_servers)
        await self.index.start()
        await asyncio.to_thread(self.recorder.start)
        self.lag.start()
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        self.lag.stop()
        self.index.stop()
        await asyncio.to_thread(self.recorder.stop)
        if self.publisher is not None:
            await asyncio.to_thread(self.publisher.close)
        await self.redis.aclose()

    @property
    def healthy(self) -> bool:
        return self.ready and self.index.alive and self.recorder.alive

    # ------------------------------------------------------------------ agents
    def agent_names(self) -> list[str]:
        return self.registry.agent_names

    def has_agent(self, name: str) -> bool:
        spec = self.registry.agent(name)
        return spec is not None and not spec.passthrough

    def model_pools(self) -> dict[str, str]:
        """Model ids a client may call through a governed pass-through call -> their pool:
        each pool by name, and the backend model id serving it where one is set."""
        pools = {pool: pool for pool in self.registry.pools}
        for pool in self.registry.pools:
            spec = self.settings.pools.get(pool)
            if spec is not None and spec.backend_model:
                pools.setdefault(spec.backend_model, pool)
        return pools

    async def authenticate(self, key: str) -> KeyInfo | None:
        return await self.keys.lookup(key)

    # ------------------------------------------------------------------ submitting
    def _check_capacity(self) -> None:
        if self.index.waiting >= self.settings.gateway_max_inflight:
            raise overloaded(f"this gateway is waiting on {self.index.waiting} requests, "
                             "its limit; retry shortly")
        if self.lag.overloaded:
            raise overloaded(f"{self.lag.lag} requests wait for the coordinators "
                             "(backpressure); retry shortly", retry_after_s=2.0)

    async def submit(self, ask: Ask, *, watch: bool = True) -> Accepted:
        """Publish ``ask`` once: a repeated Idempotency-Key returns the first request."""
        self._check_capacity()
        conversation = ask.conversation or f"c-{uuid.uuid4().hex}"
        request: Record = dict(new_request(
            agent=ask.agent, conversation_id=tenant_conversation_id(ask.tenant_id, conversation),
            text=ask.text, idempotency_key=ask.idempotency_key, tenant_id=ask.tenant_id,
            user_id=ask.user_id, lane=ask.lane, deadline_s=ask.deadline_s,
            options=dict(ask.options)), messages=ask.messages, tools=ask.tools)
        context = parse([(HEADER, ask.traceparent)]) if ask.traceparent else None
        if context is not None:
            request["trace_id"] = context[0]
        if ask.idempotency_key:
            replay = await self._replay(ask, request)
            if replay is not None:
                return await self._watched(replay, watch)
        accepted = Accepted(request, conversation, replayed=False, watch=None)
        if watch:
            accepted.watch = self.index.watch(accepted.request_id, request["conversation_id"])
        try:
            await self.store.create(request, conversation)
            await self._publish(request)
        except BaseException:
            self.release(accepted)
            await self._undo(ask, request)
            raise
        asyncio.get_running_loop().create_task(self.store.mark_published(accepted.request_id))
        return accepted

    async def _publish(self, request: Record) -> None:
        assert self.publisher is not None
        try:
            await asyncio.wait_for(self.publisher.publish(
                request_topic(request["lane"]).name, request["conversation_id"],
                AGENT_REQUEST, request), timeout=10.0)
        except (PublishError, TimeoutError) as exc:
            raise overloaded(f"the broker did not take the request ({exc})") from exc

    async def _undo(self, ask: Ask, request: Record) -> None:
        try:
            await self.store.discard(request)
            if ask.idempotency_key:
                await self.store.release(ask.tenant_id, ask.idempotency_key)
        except aioredis.RedisError:
            pass  # the records expire; a replay republishes

    async def _replay(self, ask: Ask, request: Record) -> Accepted | None:
        assert ask.idempotency_key is not None
        fingerprint = ask.fingerprint()
        held = await self.store.claim(ask.tenant_id, ask.idempotency_key,
                                      request["request_id"], fingerprint)
        if held is None:
            return None
        first_id, first_print = held
        if first_print != fingerprint:
            raise ApiError(422, "this Idempotency-Key was used with a different request",
                           code="idempotency_key_reused", param="Idempotency-Key")
        record = await self.store.get(first_id)
        if record is None or record["request"] is None:
            raise ApiError(409, "a request with this Idempotency-Key is being created; retry",
                           code="idempotency_key_in_use", param="Idempotency-Key",
                           headers={"Retry-After": "1"})
        if record["status"] == "rejected":  # the client's retry: a new attempt
            await self.store.reclaim(ask.tenant_id, ask.idempotency_key,
                                     request["request_id"], fingerprint)
            return None
        if (not record["published"] and record["answer"] is None
                and time.time() * 1000 - record["created_at_ms"] > REPUBLISH_AFTER_S * 1000):
            await self._publish(record["request"])
            await self.store.mark_published(first_id)
        return Accepted(record["request"], record["conversation"] or "", replayed=True,
                        watch=None, answer=record["answer"])

    async def _watched(self, accepted: Accepted, watch: bool) -> Accepted:
        """Watch a replayed request, then look at its record again: an answer filed in
        between is not missed."""
        if not watch or accepted.answer is not None:
            return accepted
        accepted.watch = self.index.watch(accepted.request_id,
                                          accepted.request["conversation_id"])
        record = await self.store.get(accepted.request_id)
        accepted.answer = record["answer"] if record else None
        return accepted

    def release(self, accepted: Accepted) -> None:
        if accepted.watch is not None:
            self.index.close(accepted.watch)
            accepted.watch = None

    def releaser(self, accepted: Accepted) -> BackgroundTask:
        """Runs after a streamed response, also when the client left before its body
        started (then the body's own ``finally`` never runs): no waiter is leaked."""
        async def release() -> None:
            self.release(accepted)

        return BackgroundTask(release)

    async def watch_request(self, record: Record) -> Accepted:
        """Watch a stored request (event streams, long polls)."""
        accepted = Accepted(record["request"] or {"request_id": record["request_id"],
                                                  "conversation_id": record["conversation_id"],
                                                  "deadline_ms": 0},
                            record["conversation"] or "", replayed=True, watch=None,
                            answer=record["answer"])
        return await self._watched(accepted, True)

    # ------------------------------------------------------------------ waiting
    def deadline(self, accepted: Accepted) -> float:
        """Seconds from now until the gateway stops waiting: the request's deadline (the
        coordinator answers then) plus grace."""
        deadline_ms = int(accepted.request.get("deadline_ms") or 0)
        return deadline_ms / 1000 - time.time() + self.settings.gateway_wait_grace_s

    async def timeline(self, accepted: Accepted, timeout_s: float,
                       tick_s: float | None = None) -> AsyncIterator[tuple[str, Record]]:
        """The request's events (``"event"``, and ``"delta"`` for its model steps' output
        while a streaming request runs) and finally ``("answer", answer)``; ``("tick", {})``
        after ``tick_s`` of quiet; raises WaitTimeout after ``timeout_s`` without an
        answer."""
        if accepted.answer is not None:
            yield "answer", accepted.answer
            return
        watch = accepted.watch
        assert watch is not None, "submit(..., watch=True) or watch_request first"
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout_s
        while True:
            remaining = until - loop.time()
            if remaining <= 0:
                raise WaitTimeout(accepted.request_id)
            wait = remaining if tick_s is None else min(remaining, tick_s)
            try:
                name, record = await asyncio.wait_for(watch.queue.get(), wait)
            except TimeoutError:
                if tick_s is not None and until - loop.time() > 0:
                    yield "tick", {}
                continue
            if is_answer(name):
                with contextlib.suppress(aioredis.RedisError):  # the recorder files it too
                    await self.store.file_answer(record)
                yield "answer", record
                return
            if is_delta(name):
                yield "delta", record
                continue
            if record.get("event_type") == "request_duplicate":
                first = (record.get("detail") or {}).get("first_request_id")
                if first and first != accepted.request_id:
                    self.index.follow(watch, first)
                    stored = await self.store.get(first)
                    if stored is not None and stored["answer"] is not None:
                        yield "answer", stored["answer"]
                        return
            yield "event", record

    async def wait_answer(self, accepted: Accepted, timeout_s: float) -> Record:
        async for kind, record in self.timeline(accepted, timeout_s):
            if kind == "answer":
                return record
        raise WaitTimeout(accepted.request_id)


def answer_error(answer: Record, request_id: str) -> ApiError | None:
    """The HTTP error an answer stands for (None for ok and degraded)."""
    status, kind = answer["status"], answer.get("reason_kind")
    reason = answer.get("reason") or status
    if status == "rejected":
        if kind == "unknown_agent":
            return not_found(reason, code="model_not_found", param="model")
        if kind == "conversation_budget":
            return rate_limited(reason, None, code="insufficient_quota", request_id=request_id)
        return rate_limited(reason, answer.get("retry_after_s") if kind in RATE_KINDS else None,
                            request_id=request_id)
    if status == "failed":
        if kind == "deadline":
            return deadline_error(request_id, reason)
        return ApiError(502, f"{reason} (request {request_id})", type_="server_error",
                        code="agent_failed", extra={"request_id": request_id})
    return None


def deadline_error(request_id: str, reason: str | None = None) -> ApiError:
    message = reason or "the request was not answered before its deadline"
    return ApiError(504, f"{message}; it still finishes: GET /v1/requests/{request_id}",
                    type_="server_error", code="deadline_exceeded",
                    extra={"request_id": request_id})
