"""The inference dispatcher and the tool executor: they turn step commands into results."""

from __future__ import annotations

import json
import logging
from typing import Any

import redis.asyncio as aioredis

from clawstream.settings import get_settings
from inference.client import InferenceClient, InferenceError
from processors.app import WORKER_NAME, app, inference_topic, tool_topic
from processors.conversation import Output
from processors.emit import dead_letter, now_ms, send
from processors.tools.retrieval import Retriever
from schemas import DecodeError, decode_as
from schemas.names import STEP_COMMAND, STEP_RESULT
from streams.topics import RESULTS

log = logging.getLogger(__name__)
settings = get_settings()
inference = InferenceClient(settings.serve_url, timeout=settings.interactive_step_timeout_s)
cache = aioredis.Redis.from_url(settings.redis_url)
TOOLS = {tool.name: tool for tool in (Retriever(inference, cache),)}


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


async def run_model_step(cmd: dict[str, Any]) -> Output:
    started = now_ms()
    call = cmd["model_call"]
    try:
        gen = await inference.generate(call["messages"], max_tokens=call["max_tokens"],
                                       temperature=call["temperature"])
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
    try:
        output = await tool.run(json.loads(call["arguments_json"]))
    except (ValueError, InferenceError) as exc:
        retryable = isinstance(exc, InferenceError) and exc.retryable
        return _result(cmd, started, status="error", error=_error(exc, retryable))
    return _result(cmd, started, output=output)


async def _serve(stream: Any, run: Any) -> None:
    async for event in stream.events():
        try:
            cmd = decode_as(STEP_COMMAND, event.value)
        except DecodeError as exc:
            await dead_letter(event, str(exc), "DecodeError")
            continue
        try:
            await send(await run(cmd))
        except Exception as exc:
            # Expected failures become error results inside ``run``; this is the poison case.
            log.exception("dead-lettering step %s", cmd["step_id"])
            await dead_letter(event, f"processing failed: {exc!r}", type(exc).__name__, cmd)


@app.agent(inference_topic, concurrency=2)
async def dispatch_inference(stream):  # type: ignore[no-untyped-def]
    await _serve(stream, run_model_step)


@app.agent(tool_topic, concurrency=2)
async def execute_tools(stream):  # type: ignore[no-untyped-def]
    await _serve(stream, run_tool_step)
