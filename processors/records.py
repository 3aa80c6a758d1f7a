"""The records the coordinator emits, built in one place: events, step commands, answers and
dead letters. Pure functions of their inputs, like the rules that call them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypedDict, cast

from clawstream.processors.keys import canonical_json, content_hash, short_hash, step_key
from clawstream.processors.state import ActiveRequest, Attempt
from clawstream.schemas import encode
from clawstream.schemas.names import (
    AGENT_ANSWER,
    AGENT_EVENT,
    AGENT_REQUEST,
    DEAD_LETTER,
    STEP_COMMAND,
    STEP_RESULT,
)
from clawstream.schemas.records import (
    AgentAnswer,
    AgentEvent,
    AgentRequest,
    AnswerStatus,
    CacheControl,
    DeadLetter,
    FunctionCall,
    ModelCall,
    ReasonKind,
    StepCommand,
    StepResult,
    StepType,
    ToolCall,
    Usage,
    WireRecord,
    empty_usage,
)
from clawstream.streams.topics import (
    ANSWERS,
    DLQ,
    EVENTS,
    INFERENCE_REQUESTS,
    TOOL_REQUESTS,
    request_topic,
)


@dataclass
class Output:
    """A record to send: its topic, key (the conversation) and schema."""

    topic: str
    key: str
    schema: str
    record: WireRecord

    @property
    def command(self) -> StepCommand | None:
        """The step command this output carries, if it is one."""
        return cast(StepCommand, self.record) if self.schema == STEP_COMMAND else None

    @property
    def result(self) -> StepResult | None:
        return cast(StepResult, self.record) if self.schema == STEP_RESULT else None

    @property
    def letter(self) -> DeadLetter | None:
        return cast(DeadLetter, self.record) if self.schema == DEAD_LETTER else None

    @property
    def answer(self) -> AgentAnswer | None:
        return cast(AgentAnswer, self.record) if self.schema == AGENT_ANSWER else None

    @property
    def event(self) -> AgentEvent | None:
        return cast(AgentEvent, self.record) if self.schema == AGENT_EVENT else None


class Subject(TypedDict):
    """What an event is about."""

    conversation_id: str
    request_id: str | None
    trace_id: str | None
    agent: str | None


def about(req: AgentRequest) -> Subject:
    return {"conversation_id": req["conversation_id"], "request_id": req["request_id"],
            "trace_id": req["trace_id"], "agent": req["agent"]}


def event(kind: str, at_ms: int, subject: Subject, *, step_id: str | None = None,
          agent_version: str | None = None, worker: str | None = None,
          detail: Mapping[str, object] | None = None) -> Output:
    """An audit event. Its id is a hash of everything else in it, not a random draw, so
    the rules replayed over the same events write byte-identical events; two events with
    the same id say exactly the same thing."""
    body = {
        "event_type": kind,
        "at_ms": at_ms,
        "request_id": subject["request_id"],
        "conversation_id": subject["conversation_id"],
        "trace_id": subject["trace_id"],
        "step_id": step_id,
        "agent": subject["agent"],
        "agent_version": agent_version,
        "worker": worker,
        "detail": {k: str(v) for k, v in (detail or {}).items()},
    }
    record = cast(AgentEvent, {"event_id": content_hash(body)[:32], **body})
    return Output(EVENTS.name, subject["conversation_id"], AGENT_EVENT, record)


def step_command(req: AgentRequest, run: int, index: int, step_type: StepType, now_ms: int,
                 timeout_ms: int, model_call: ModelCall | None, tool_call: ToolCall | None,
                 key_input: Any = None, cache: CacheControl | None = None) -> StepCommand:
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


def command_output(cmd: StepCommand) -> Output:
    """A model or tool step's command (a delegation's command is a child request:
    :func:`clawstream.processors.delegation.issue`)."""
    assert cmd["step_type"] != "agent", "a delegation is issued as a child request"
    topic = INFERENCE_REQUESTS if cmd["step_type"] == "model" else TOOL_REQUESTS
    return Output(topic.name, cmd["conversation_id"], STEP_COMMAND, cmd)


def step_name(cmd: StepCommand) -> str:
    if cmd["tool_call"]:
        return cmd["tool_call"]["name"]
    assert cmd["model_call"] is not None
    return cmd["model_call"]["model"]


def answer(req: AgentRequest, status: AnswerStatus, text: str, reason: str | None,
           now_ms: int, agent_version: str, active: ActiveRequest | None = None,
           tool_calls: list[FunctionCall] | None = None, *,
           reason_kind: ReasonKind | None = None, retry_after_s: float | None = None
           ) -> Output:
    """The request's one answer; ``active`` carries what its run spent and did (none for a
    request answered before it ran). ``reason_kind`` and ``retry_after_s`` are the reason
    for machines: the gateway turns a rate-limit rejection into 429 + Retry-After and a
    deadline into 504 without parsing the text."""
    record: AgentAnswer = {
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
        "usage": active["usage"] if active else empty_usage(),
        "timeline": active["timeline"] if active else [],
        "cache": active.get("cache", []) if active else [],
        "tool_calls": tool_calls or [],
        "finish_reason": "tool_calls" if tool_calls else None,
        "parent_request_id": req.get("parent_request_id"),
        "parent_step_id": req.get("parent_step_id"),
        "delegation": req.get("delegation"),
    }
    return Output(ANSWERS.name, req["conversation_id"], AGENT_ANSWER, record)


def prompt_signature(cmd: StepCommand) -> str:
    """Hash of prompt version + inputs: two dead letters with the same signature failed on
    the same input, whatever the request."""
    if cmd["model_call"]:
        call = cmd["model_call"]
        return short_hash({"prompt_version": call["prompt_version"], "model": call["model"],
                           "messages": call["messages"]})
    tool = cmd["tool_call"]
    assert tool is not None
    return short_hash({"tool": tool["name"], "version": tool["version"],
                       "arguments": tool["arguments_json"]})


def dead_letter(req: AgentRequest, attempts: list[Attempt], cmd: StepCommand,
                error_class: str, message: str, now_ms: int) -> Output:
    """The dead letter of a step that used its last attempt."""
    call = cmd["model_call"] if cmd["model_call"] else cmd["tool_call"]
    return _letter(req, attempts, cmd["step_id"], step_name(cmd), cmd["attempt"],
                   canonical_json(call), prompt_signature(cmd), error_class, message, now_ms)


def plan_letter(req: AgentRequest, step_id: str, step: str, error_class: str, message: str,
                now_ms: int) -> Output:
    """The dead letter of a step whose command could not even be built (the agent's plan
    raised on this request): no attempt ran."""
    return _letter(req, [], step_id, step, 0, None, None, error_class, message, now_ms)


def _letter(req: AgentRequest, attempts: list[Attempt], step_id: str, step: str,
            attempt: int, parameters_json: str | None, signature: str | None,
            error_class: str, message: str, now_ms: int) -> Output:
    """Its payload is the request, marked as a redrive of this letter, so ``clawstream dlq
    redrive`` sends it back unchanged and a second redrive of the same letter is
    recognised as a duplicate."""
    dlq_id = short_hash({"step_id": step_id, "request_id": req["request_id"]})
    redrive: AgentRequest = {**req, "options": {**req["options"], "redrive_of": dlq_id}}
    record: DeadLetter = {
        "dlq_id": dlq_id,
        "reason": f"step {step} failed after {attempt} attempt(s): {message}",
        "error_class": error_class,
        "at_ms": now_ms,
        "source_topic": request_topic(req["lane"]).name,
        "source_partition": -1,
        "source_offset": -1,
        "key": req["conversation_id"].encode(),
        "payload": encode(AGENT_REQUEST, redrive),
        "request_id": req["request_id"],
        "conversation_id": req["conversation_id"],
        "tenant_id": req["tenant_id"],
        "step_id": step_id,
        "parameters_json": parameters_json,
        "prompt_signature": signature,
        "attempts": [{"attempt": a["attempt"], "at_ms": a["at_ms"], "error": a["error"]}
                     for a in attempts],
    }
    return Output(DLQ.name, req["conversation_id"], DEAD_LETTER, record)


def usage_sum(total: Usage, more: Usage) -> Usage:
    return {"prompt_tokens": total["prompt_tokens"] + more["prompt_tokens"],
            "completion_tokens": total["completion_tokens"] + more["completion_tokens"],
            "cost_usd": total["cost_usd"] + more["cost_usd"],
            "saved_tokens": total["saved_tokens"] + more["saved_tokens"],
            "saved_cost_usd": total["saved_cost_usd"] + more["saved_cost_usd"]}
