"""The inference dispatcher and the tool executor: they turn step commands into results.

Workers never retry or sleep on a failure: they report it (with the backend's Retry-After)
and the coordinator schedules the next attempt, so a failing step holds no partition.

Both fetch through :mod:`clawstream.processors.flow.dispatch`: lanes (interactive first), tenants in
turn, the tokens/s limiter per model pool for model steps, and paused partitions while a
downstream reports overload (Serve's 503 + Retry-After): no new step is fetched until then.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from clawstream.config import get_settings
from clawstream.inference.client import InferenceClient, InferenceError, InferenceOverloaded
from clawstream.processors.app import (
    WORKER_NAME,
    app,
    inference_batch_topic,
    inference_interactive_topic,
    tool_topic,
)
from clawstream.processors.caching import CacheControl, Caches, collecting
from clawstream.processors.caching.report import current as cache_report
from clawstream.processors.emit import dead_letter, now_ms, send
from clawstream.processors.flow import runtime
from clawstream.processors.flow.acks import OrderedAcks
from clawstream.processors.flow.dispatch import Dispatcher, Unlimited
from clawstream.processors.flow.limiter import PoolAdmission
from clawstream.processors.flow.pools import estimate_tokens, smallest_pool
from clawstream.processors.flow.recall import Recall
from clawstream.processors.flow.scheduler import LaneScheduler, Pending
from clawstream.processors.ledger import EffectLedger
from clawstream.processors.records import Output
from clawstream.processors.tools.base import Tool, ToolContext, ToolError
from clawstream.processors.tools.retrieval import Retriever
from clawstream.schemas import DecodeError, decode_as
from clawstream.schemas.names import STEP_COMMAND, STEP_RESULT
from clawstream.streams.topics import RESULTS

log = logging.getLogger(__name__)
settings = get_settings()
inference = InferenceClient(settings.serve_url, timeout=settings.batch_step_timeout_s)
cache = aioredis.Redis.from_url(settings.redis_url)
ledger = EffectLedger(cache)
caches = Caches(settings, inference)


def _tools() -> dict[str, Tool]:
    tools: list[Tool] = [Retriever(caches.embeddings),
                         Recall(cache, settings.context_exchanges)]
    if settings.fault_injection:
        from clawstream.processors.tools.faults import fault_tools

        tools += fault_tools(cache)
    return {tool.spec.name: tool for tool in tools}


TOOLS = _tools()


class InFlight:
    """Steps being run by this worker, so SIGTERM can wait for them (see processors.main)."""

    def __init__(self) -> None:
        self.count = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def __enter__(self) -> None:
        self.count += 1
        self.idle.clear()

    def __exit__(self, *exc: object) -> None:
        self.count -= 1
        if self.count == 0:
            self.idle.set()


in_flight = InFlight()


def _result(cmd: dict[str, Any], started: int, **fields: Any) -> Output:
    record = {
        "step_id": cmd["step_id"],
        "step_index": cmd["step_index"],
        "step_type": cmd["step_type"],
        "attempt": cmd["attempt"],
        "request_id": cmd["request_id"],
        "conversation_id": cmd["conversation_id"],
        "trace_id": cmd["trace_id"],
        "status": "ok",
        "output": "",
        "error": None,
        "worker": WORKER_NAME,
        "issued_at_ms": cmd["issued_at_ms"],
        "started_at_ms": started,
        "finished_at_ms": now_ms(),
        "cache_hit": False,
        "model": None,
        "backend": None,
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0,
                  "saved_tokens": 0, "saved_cost_usd": 0.0},
        "cache": cache_report().records(),
    }
    record.update(fields)
    return Output(RESULTS.name, cmd["conversation_id"], STEP_RESULT, record)


def _error(exc: BaseException, retryable: bool, retry_after_s: float | None = None
           ) -> dict[str, Any]:
    return {"error_class": type(exc).__name__, "message": str(exc)[:500] or repr(exc),
            "retryable": retryable,
            "retry_after_ms": None if retry_after_s is None else int(retry_after_s * 1000)}


async def run_model_step(cmd: dict[str, Any], pool: str | None = None) -> Output:
    started = now_ms()
    call = cmd["model_call"]
    spec = settings.pools.get(pool or call["model"])
    try:
        outcome = await caches.model_step(
            call, CacheControl.from_record(cmd.get("cache")), cache_report(),
            lambda: asyncio.wait_for(
                inference.generate(call["messages"], max_tokens=call["max_tokens"],
                                   temperature=call["temperature"],
                                   model=spec.backend_model if spec else None),
                timeout=cmd["timeout_ms"] / 1000),
            served_model=spec.backend_model if spec else None)
    except TimeoutError:
        return _result(cmd, started, status="error", error=_error(
            TimeoutError(f"model call exceeded its {cmd['timeout_ms']} ms limit"), True))
    except InferenceError as exc:
        retry_after = exc.retry_after if isinstance(exc, InferenceOverloaded) else None
        if isinstance(exc, InferenceOverloaded):  # backpressure: stop fetching meanwhile
            model_dispatcher.hold(retry_after or settings.inference_retry_after_s)
        return _result(cmd, started, status="error",
                       error=_error(exc, exc.retryable, retry_after))
    return _result(cmd, started, output=outcome.output, model=outcome.model,
                   backend=outcome.backend, usage=outcome.usage, cache_hit=outcome.cache_hit)


async def _call_tool(tool: Tool, cmd: dict[str, Any], ctx: ToolContext) -> str:
    """Mutating calls go through the ledger. The hard cut comes one limit after the
    coordinator's budget, so the coordinator gives the attempt up first and the cut only
    frees this worker's slot from a tool that ignores its limit."""
    arguments = json.loads(cmd["tool_call"]["arguments_json"])
    hard_cut_s = ctx.timeout_s * (settings.step_budget_factor + 1)
    if not tool.spec.mutating:
        return await asyncio.wait_for(tool.run(arguments, ctx), hard_cut_s)
    recorded = await ledger.recorded(ctx.step_id)
    if recorded is not None:
        log.info("step %s already applied: returning the ledger's result", ctx.step_id)
        return recorded
    output = await asyncio.wait_for(tool.run(arguments, ctx), hard_cut_s)
    await ledger.record(ctx.step_id, output, WORKER_NAME, now_ms())
    return output


async def run_tool_step(cmd: dict[str, Any]) -> Output:
    started = now_ms()
    call = cmd["tool_call"]
    tool = TOOLS.get(call["name"])
    if tool is None:
        return _result(cmd, started, status="error",
                       error=_error(LookupError(f"unknown tool {call['name']!r}"), False))
    if runtime.flags().tool_killed(call["name"]):
        return _result(cmd, started, status="error", error=_error(
            RuntimeError(f"tool {call['name']} is switched off (kill switch)"), False))
    ctx = ToolContext(step_id=cmd["step_id"], attempt=cmd["attempt"],
                      timeout_s=cmd["timeout_ms"] / 1000)
    try:
        outcome = await caches.tool_step(
            tool.spec, json.loads(call["arguments_json"]),
            CacheControl.from_record(cmd.get("cache")), cache_report(),
            lambda: _call_tool(tool, cmd, ctx))
    except ToolError as exc:
        return _result(cmd, started, status="error",
                       error=_error(exc, exc.retryable, exc.retry_after_s))
    except ValueError as exc:
        return _result(cmd, started, status="error", error=_error(exc, False))
    except (InferenceError, RedisError, TimeoutError) as exc:
        retryable = not isinstance(exc, InferenceError) or exc.retryable
        return _result(cmd, started, status="error", error=_error(exc, retryable))
    return _result(cmd, started, output=outcome.output, usage=outcome.usage,
                   cache_hit=outcome.cache_hit)


async def _finish(item: Pending, output: Output | Exception) -> None:
    if isinstance(output, Exception):
        log.error("dead-lettering step %s: %r", item.cmd["step_id"], output)
        await dead_letter(item.event, f"processing failed: {output!r}",
                          type(output).__name__, item.cmd)
    else:
        await send(output)
    acks.done(item.event)


def _model_item(cmd: dict[str, Any], event: Any) -> Pending:
    call = cmd["model_call"]
    pool = call["model"] if call["model"] in settings.pools else (
        smallest_pool(settings, runtime.flags()) or next(iter(settings.pools)))
    return Pending(cmd, event, cost=estimate_tokens(call["messages"], call["max_tokens"]),
                   pool=pool)


async def _cached(cmd: dict[str, Any], step: Awaitable[Output]) -> Output:
    """Run one step under a fresh cache report (its result carries what the caches did);
    a cache outage is a miss for the step and an audit event for the operator."""
    with in_flight, collecting() as report:
        result = await step
    for output in caches.outage_events(cmd, report, WORKER_NAME, now_ms()):
        await send(output)
    return result


async def _run_model_item(item: Pending) -> Output:
    return await _cached(item.cmd, run_model_step(item.cmd, item.pool))


async def _run_tool_item(item: Pending) -> Output:
    return await _cached(item.cmd, run_tool_step(item.cmd))


acks = OrderedAcks()
model_dispatcher = Dispatcher(
    "inference", LaneScheduler(settings.dispatch_buffer_per_lane),
    PoolAdmission(runtime.redis(), settings, runtime.flags), _run_model_item, _finish,
    settings.dispatch_concurrency, reserved=settings.dispatch_interactive_reserved)
# Tool commands of both lanes share one topic: a larger buffer, so a batch burst rarely
# blocks the stream an interactive tool step arrives on.
tool_dispatcher = Dispatcher(
    "tools", LaneScheduler(settings.dispatch_buffer_per_lane * 4), Unlimited(),
    _run_tool_item, _finish, settings.tool_concurrency,
    reserved=settings.dispatch_interactive_reserved)


async def _intake(stream: Any, dispatcher: Dispatcher,
                  make: Any = lambda cmd, event: Pending(cmd, event)) -> None:
    """Fetch only: decode and hand over; offsets are acked when the step's result is sent."""
    async for event in stream.noack().events():
        acks.track(event)
        try:
            cmd = decode_as(STEP_COMMAND, event.value)
        except DecodeError as exc:
            await dead_letter(event, str(exc), "DecodeError")
            acks.done(event)
            continue
        await dispatcher.submit(make(cmd, event))


@app.agent(inference_interactive_topic)
async def dispatch_inference(stream):  # type: ignore[no-untyped-def]
    await _intake(stream, model_dispatcher, _model_item)


@app.agent(inference_batch_topic)
async def dispatch_inference_batch(stream):  # type: ignore[no-untyped-def]
    await _intake(stream, model_dispatcher, _model_item)


@app.agent(tool_topic)
async def execute_tools(stream):  # type: ignore[no-untyped-def]
    await _intake(stream, tool_dispatcher)


@app.task
async def run_dispatchers() -> None:
    runtime.flag_reader()
    await asyncio.gather(model_dispatcher.run_forever(), tool_dispatcher.run_forever())


async def drain(timeout_s: float) -> bool:
    """Admit nothing more, then wait for the steps in flight; True if they all finished.
    Buffered steps stay unacked and go to the partitions' next owner."""
    for dispatcher in (model_dispatcher, tool_dispatcher):
        dispatcher.hold(timeout_s + 60)
    log.info("draining %d in-flight step(s), up to %.0f s", in_flight.count, timeout_s)
    try:
        await asyncio.wait_for(in_flight.idle.wait(), timeout_s)
    except TimeoutError:
        log.warning("drain timed out with %d step(s) in flight", in_flight.count)
        return False
    return True
