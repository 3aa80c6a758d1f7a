"""The records the coordinator emits, built in one place: events, step commands, answers and
dead letters. Pure functions of their inputs, like the rules that call them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from clawstream.processors.keys import canonical_json, short_hash, step_key
from clawstream.schemas import encode
from clawstream.schemas.names import (
    AGENT_ANSWER,
    AGENT_EVENT,
    AGENT_REQUEST,
    DEAD_LETTER,
    STEP_COMMAND,
)
from clawstream.streams.topics import (
    ANSWERS,
    DLQ,
    EVENTS,
    INFERENCE_REQUESTS,
    REQUESTS_BATCH,
    REQUESTS_INTERACTIVE,
    TOOL_REQUESTS,
)

Record = dict[str, Any]


@dataclass
class Output:
    topic: str
    key: str
    schema: str
    record: Record


def event(kind: str, at_ms: int, req: Record, **extra: Any) -> Output:
    detail = {k: str(v) for k, v in extra.pop("detail", {}).items()}
    record = {
        "event_id": uuid.uuid4().hex,
        "event_type": kind,
        "at_ms": at_ms,
        "request_id": req.get("request_id"),
        "conversation_id": req.get("conversation_id"),
        "trace_id": req.get("trace_id"),
        "step_id": extra.get("step_id"),
        "agent": req.get("agent"),
        "agent_version": extra.get("agent_version"),
        "worker": extra.get("worker"),
        "detail": detail,
    }
    return Output(EVENTS.name, req["conversation_id"], AGENT_EVENT, record)


def empty_usage() -> Record:
    return {"prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0,
            "saved_tokens": 0, "saved_cost_usd": 0.0}


def step_command(req: Record, run: int, index: int, step_type: str, now_ms: int,
                 timeout_ms: int, model_call: Record | None, tool_call: Record | None,
                 key_input: Any = None, cache: Record | None = None) -> Record:
    """A new step, attempt 1. Its id is the idempotency key of the step: the same for every
    attempt, different for another request, step, run (a redrive) or input."""
    call = model_call if step_type == "model" else tool_call
    key_input = key_input if key_input is not None else {
        "request_id": req["request_id"], "run": run, "index": index, "call": call}
    return {
        "step_id": step_key(step_type, req["conversation_id"], key_input),
        "step_index": index,
        "step_type": step_type,
        "attempt": 1,
        "request_id": req["request_id"],
        "conversation_id": req["conversation_id"],
        "tenant_id": req["tenant_id"],
        "trace_id": req["trace_id"],
        "lane": req["lane"],
        "issued_at_ms": now_ms,
        "timeout_ms": timeout_ms,
        "deadline_ms": req["deadline_ms"],
        "model_call": model_call,
        "tool_call": tool_call,
        "cache": cache,
    }


def command_output(cmd: Record) -> Output:
    topic = INFERENCE_REQUESTS if cmd["step_type"] == "model" else TOOL_REQUESTS
    return Output(topic.name, cmd["conversation_id"], STEP_COMMAND, cmd)


def step_name(cmd: Record) -> str:
    return str(cmd["tool_call"]["name"] if cmd["tool_call"] else cmd["model_call"]["model"])


def answer(active: Record, status: str, text: str, reason: str | None, now_ms: int,
           agent_version: str, *, reason_kind: str | None = None,
           retry_after_s: float | None = None) -> Output:
    """The request's one answer. ``reason_kind`` and ``retry_after_s`` are the reason for
    machines: the gateway turns a rate-limit rejection into 429 + Retry-After and a
    deadline into 504 without parsing the text."""
    req = active["request"]
    record = {
        "request_id": req["request_id"],
        "idempotency_key": req["idempotency_key"],
        "conversation_id": req["conversation_id"],
        "tenant_id": req["tenant_id"],
        "trace_id": req["trace_id"],
        "agent": req["agent"],
        "agent_version": agent_version,
        "status": status,
        "text": text,
        "reason": reason,
        "reason_kind": reason_kind,
        "retry_after_s": retry_after_s,
        "created_at_ms": req["created_at_ms"],
        "answered_at_ms": now_ms,
        "usage": active.get("usage") or empty_usage(),
        "timeline": active.get("timeline", []),
        "cache": active.get("cache", []),
    }
    return Output(ANSWERS.name, req["conversation_id"], AGENT_ANSWER, record)


def prompt_signature(cmd: Record) -> str:
    """Hash of prompt version + inputs: two dead letters with the same signature failed on
    the same input, whatever the request."""
    if cmd["model_call"]:
        call = cmd["model_call"]
        return short_hash({"prompt_version": call["prompt_version"], "model": call["model"],
                           "messages": call["messages"]})
    tool = cmd["tool_call"]
    return short_hash({"tool": tool["name"], "version": tool["version"],
                       "arguments": tool["arguments_json"]})


def dead_letter(active: Record, cmd: Record, error: Record, now_ms: int) -> Output:
    """The step's dead letter. Its payload is the request, marked as a redrive of this
    letter, so ``clawstream dlq redrive`` sends it back unchanged and a second redrive of
    the same letter is recognised as a duplicate."""
    req = active["request"]
    dlq_id = short_hash({"step_id": cmd["step_id"], "request_id": req["request_id"]})
    redrive = {**req, "options": {**req["options"], "redrive_of": dlq_id}}
    call = cmd["model_call"] if cmd["model_call"] else cmd["tool_call"]
    source = REQUESTS_INTERACTIVE if req["lane"] == "interactive" else REQUESTS_BATCH
    record = {
        "dlq_id": dlq_id,
        "reason": f"step {step_name(cmd)} failed after {cmd['attempt']} attempt(s): "
                  f"{error['message']}",
        "error_class": error["error_class"],
        "at_ms": now_ms,
        "source_topic": source.name,
        "source_partition": -1,
        "source_offset": -1,
        "key": req["conversation_id"].encode(),
        "payload": encode(AGENT_REQUEST, redrive),
        "request_id": req["request_id"],
        "conversation_id": req["conversation_id"],
        "tenant_id": req["tenant_id"],
        "step_id": cmd["step_id"],
        "parameters_json": canonical_json(call),
        "prompt_signature": prompt_signature(cmd),
        "attempts": list(active["attempts"]),
    }
    return Output(DLQ.name, req["conversation_id"], DEAD_LETTER, record)
