"""The inference dispatcher and the tool executor: they turn step commands into results.

Both fetch through :mod:`processors.flow.dispatch`: lanes (interactive first), tenants in
turn, the tokens/s limiter per model pool for model steps, and paused partitions (not
retries) while a downstream is overloaded.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import redis.asyncio as aioredis

from clawstream.settings import get_settings
from inference.client import InferenceClient, InferenceError, InferenceOverloaded
from processors.app import WORKER_NAME, app, inference_topic, tool_topic
from processors.conversation import Output
from processors.emit import dead_letter, now_ms, send
from processors.flow import runtime
from processors.flow.dispatch import Dispatcher, Overloaded, PauseRule, Unlimited
from processors.flow.limiter import PoolAdmission
from processors.flow.pools import estimate_tokens, smallest_pool
from processors.flow.recall import Recall
from processors.flow.scheduler import LaneScheduler, Pending
from processors.tools.retrieval import Retriever
from schemas import DecodeError, decode_as
from schemas.names import STEP_COMMAND, STEP_RESULT
from streams.topics import INFERENCE_REQUESTS, INFERENCE_REQUESTS_BATCH, RESULTS, TOOL_REQUESTS

log = logging.getLogger(__name__)
settings = get_settings()
inference = InferenceClient(settings.serve_url, timeout=settings.interactive_step_timeout_s)
cache = aioredis.Redis.from_url(settings.redis_url)
TOOLS = {tool.name: tool for tool in (Retriever(inference, cache),
                                      Recall(cache, settings.context_exchanges))}


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
    }
    record.update(fields)
    return Output(RESULTS.name, cmd["conversation_id"], STEP_RESULT, record)


def _error(exc: Exception, retryable: bool) -> dict[str, Any]:
    return {"error_class": type(exc).__name__, "message": str(exc)[:500],
            "retryable": retryable}


def _overloaded(exc: InferenceOverloaded) -> Overloaded:
    return Overloaded(str(exc), exc.retry_after)


async def run_model_step(cmd: dict[str, Any], pool: str | None = None) -> Output:
    """Raises :class:`Overloaded` on Serve's back-pressure: the dispatcher pauses, and the
    step waits at the head of its queue instead of failing."""
    started = now_ms()
    call = cmd["model_call"]
    spec = settings.pools.get(pool or call["model"])
    try:
        gen = await inference.generate(call["messages"], max_tokens=call["max_tokens"],
                                       temperature=call["temperature"],
                                       model=spec.backend_model if spec else None)
    except InferenceOverloaded as exc:
        raise _overloaded(exc) from exc
    except InferenceError as exc:
        return _result(cmd, started, status="error", error=_error(exc, exc.retryable))
    usage = {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens,
             "cost_usd": 0.0, "saved_tokens": 0, "saved_cost_usd": 0.0}
    return _result(cmd, started, output=gen.text, model=gen.model, backend=gen.backend,
                   usage=usage)


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
    try:
        output = await tool.run(json.loads(call["arguments_json"]))
    except InferenceOverloaded as exc:
        raise _overloaded(exc) from exc
    except (ValueError, InferenceError) as exc:
        retryable = isinstance(exc, InferenceError) and exc.retryable
        return _result(cmd, started, status="error", error=_error(exc, retryable))
    return _result(cmd, started, output=output)


async def _finish(item: Pending, output: Output | Exception) -> None:
    if isinstance(output, Exception):
        log.error("dead-lettering step %s: %r", item.cmd["step_id"], output)
        await dead_letter(item.event, f"processing failed: {output!r}",
                          type(output).__name__, item.cmd)
    else:
        await send(output)
    item.event.ack()


def _model_item(cmd: dict[str, Any], event: Any) -> Pending:
    call = cmd["model_call"]
    pool = call["model"] if call["model"] in settings.pools else (
        smallest_pool(settings, runtime.flags()) or next(iter(settings.pools)))
    return Pending(cmd, event, cost=estimate_tokens(call["messages"], call["max_tokens"]),
                   pool=pool)


async def _run_model_item(item: Pending) -> Output:
    return await run_model_step(item.cmd, item.pool)


async def _run_tool_item(item: Pending) -> Output:
    return await run_tool_step(item.cmd)


buffer = settings.dispatch_buffer_per_lane
model_queue = LaneScheduler(buffer)
tool_queue = LaneScheduler(buffer)
model_dispatcher = Dispatcher(
    "inference", model_queue, PoolAdmission(runtime.redis(), settings, runtime.flags),
    _run_model_item, _finish, lambda: runtime.consumer_of(app), settings.dispatch_concurrency)
model_dispatcher.pause_rules = [
    PauseRule(frozenset({INFERENCE_REQUESTS.name}), lambda: model_queue.full("interactive")),
    PauseRule(frozenset({INFERENCE_REQUESTS_BATCH.name}), lambda: model_queue.full("batch")),
]
tool_dispatcher = Dispatcher("tools", tool_queue, Unlimited(), _run_tool_item, _finish,
                             lambda: runtime.consumer_of(app), 2)
tool_dispatcher.pause_rules = [
    PauseRule(frozenset({TOOL_REQUESTS.name}), lambda: len(tool_queue) >= buffer)]


async def _intake(stream: Any, dispatcher: Dispatcher,
                  make: Any = lambda cmd, event: Pending(cmd, event)) -> None:
    """Fetch only: decode and hand over; offsets are acked when the step's result is sent."""
    async for event in stream.noack().events():
        try:
            cmd = decode_as(STEP_COMMAND, event.value)
        except DecodeError as exc:
            await dead_letter(event, str(exc), "DecodeError")
            event.ack()
            continue
        dispatcher.submit(make(cmd, event))


@app.agent(inference_topic)
async def dispatch_inference(stream):  # type: ignore[no-untyped-def]
    await _intake(stream, model_dispatcher, _model_item)


@app.agent(tool_topic)
async def execute_tools(stream):  # type: ignore[no-untyped-def]
    await _intake(stream, tool_dispatcher)


@app.task
async def run_dispatchers() -> None:
    runtime.flag_reader()
    await asyncio.gather(model_dispatcher.run_forever(), tool_dispatcher.run_forever())
