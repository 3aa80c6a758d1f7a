"""The wire records as types: one TypedDict per Avro record schema in ``schemas/avro``.

Avro is the source of truth; these mirror it field by field so mypy checks every key the
processors read or write (``tests/unit/test_record_types.py`` fails when a schema and its
type disagree). TypedDicts rather than classes: fastavro reads and writes plain dicts, and
Faust's tables store them as JSON, so the types cost nothing at run time.
"""

from __future__ import annotations

from typing import Literal, TypedDict

Lane = Literal["interactive", "batch"]
StepType = Literal["model", "tool", "agent"]
StepStatus = Literal["ok", "error"]
AnswerStatus = Literal["ok", "degraded", "failed", "rejected"]
ReasonKind = Literal["user_rate_limit", "tenant_rate_limit", "tenant_budget",
                     "conversation_budget", "invalid_request", "idempotency_conflict",
                     "unknown_agent", "deadline"]
"""An answer's reason for machines (``AgentAnswer.reason_kind``; a string on the wire, so
a newer kind reads as an unknown string, not a decoding error)."""


class Usage(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    saved_tokens: int
    saved_cost_usd: float


class CacheUsage(TypedDict):
    layer: str
    hits: int
    misses: int
    saved_tokens: int
    saved_cost_usd: float


class CacheControl(TypedDict):
    enabled: bool
    max_age_s: float | None
    ttl_s: float | None


class FunctionCall(TypedDict):
    id: str
    name: str
    arguments_json: str


class FunctionSpec(TypedDict):
    name: str
    description: str
    parameters_json: str


class Message(TypedDict):
    role: str
    content: str
    tool_calls: list[FunctionCall]
    tool_call_id: str | None
    name: str | None


class ModelCall(TypedDict):
    model: str
    prompt_version: str
    messages: list[Message]
    max_tokens: int
    temperature: float
    tools: list[FunctionSpec]
    tool_choice: str | None
    top_p: float | None
    stop: list[str]
    seed: int | None
    stream: bool


class ToolCall(TypedDict):
    name: str
    version: str
    arguments_json: str
    mutating: bool
    call_id: str | None


class StepError(TypedDict):
    error_class: str
    message: str
    retryable: bool
    retry_after_ms: int | None
    infrastructure: bool


class Effect(TypedDict):
    step_id: str
    compensation: str
    arguments_json: str
    output: str


class Delegation(TypedDict):
    parent_conversation_id: str
    parent_attempt: int
    root_request_id: str
    depth: int
    max_depth: int
    token_budget: int | None
    cost_budget_usd: float | None


class TimelineEntry(TypedDict):
    step_id: str
    step_type: StepType
    name: str
    status: str
    worker: str
    attempt: int
    issued_at_ms: int
    queue_wait_ms: float
    run_ms: float
    result_wait_ms: float
    cache_hit: bool
    usage: Usage | None
    request_id: str | None
    conversation_id: str | None
    agent_status: str | None
    depth: int


class AgentRequest(TypedDict):
    request_id: str
    idempotency_key: str
    conversation_id: str
    tenant_id: str
    user_id: str
    agent: str
    lane: Lane
    text: str
    created_at_ms: int
    deadline_ms: int
    trace_id: str
    options: dict[str, str]
    messages: list[Message]
    tools: list[FunctionSpec]
    parent_request_id: str | None
    parent_step_id: str | None
    delegation: Delegation | None


class StepCommand(TypedDict):
    step_id: str
    step_index: int
    step_type: StepType
    attempt: int
    request_id: str
    conversation_id: str
    tenant_id: str
    trace_id: str
    lane: Lane
    issued_at_ms: int
    timeout_ms: int
    deadline_ms: int
    model_call: ModelCall | None
    tool_call: ToolCall | None
    cache: CacheControl | None


class StepResult(TypedDict):
    step_id: str
    step_index: int
    step_type: StepType
    attempt: int
    request_id: str
    conversation_id: str
    trace_id: str
    status: StepStatus
    output: str
    error: StepError | None
    worker: str
    issued_at_ms: int
    started_at_ms: int
    finished_at_ms: int
    cache_hit: bool
    model: str | None
    backend: str | None
    usage: Usage
    cache: list[CacheUsage]
    tool_calls: list[FunctionCall]
    finish_reason: str | None
    answer: AgentAnswer | None
    effects: list[Effect]


class AgentEvent(TypedDict):
    event_id: str
    event_type: str
    at_ms: int
    request_id: str | None
    conversation_id: str | None
    trace_id: str | None
    step_id: str | None
    agent: str | None
    agent_version: str | None
    worker: str | None
    detail: dict[str, str]


class AgentAnswer(TypedDict):
    request_id: str
    idempotency_key: str
    conversation_id: str
    tenant_id: str
    trace_id: str
    agent: str
    agent_version: str
    status: AnswerStatus
    text: str
    reason: str | None
    reason_kind: str | None
    retry_after_s: float | None
    created_at_ms: int
    answered_at_ms: int
    usage: Usage
    timeline: list[TimelineEntry]
    cache: list[CacheUsage]
    tool_calls: list[FunctionCall]
    finish_reason: str | None
    parent_request_id: str | None
    parent_step_id: str | None
    delegation: Delegation | None


class AttemptRecord(TypedDict):
    attempt: int
    at_ms: int
    error: str


class DeadLetter(TypedDict):
    dlq_id: str
    reason: str
    error_class: str
    at_ms: int
    source_topic: str
    source_partition: int
    source_offset: int
    key: bytes | None
    payload: bytes
    request_id: str | None
    conversation_id: str | None
    tenant_id: str | None
    step_id: str | None
    parameters_json: str | None
    prompt_signature: str | None
    attempts: list[AttemptRecord]


class ControlFlag(TypedDict):
    name: str
    value: str
    updated_at_ms: int
    updated_by: str


class Wakeup(TypedDict):
    conversation_id: str
    due_ms: int
    sent_at_ms: int
    worker: str


class Cancel(TypedDict):
    conversation_id: str
    request_id: str
    reason: str
    at_ms: int
    by_request_id: str | None


class StepDelta(TypedDict):
    request_id: str
    conversation_id: str
    step_id: str
    step_index: int
    attempt: int
    seq: int
    text: str
    tool_calls: list[FunctionCall]
    finish_reason: str | None
    at_ms: int


WireRecord = (AgentRequest | StepCommand | StepResult | AgentEvent | AgentAnswer | DeadLetter
              | ControlFlag | Wakeup | Cancel | StepDelta)
"""A record of one of the event schemas (``schemas.names.EVENT_SCHEMAS``)."""

RECORD_TYPES: dict[str, type] = {
    "clawstream.Usage": Usage,
    "clawstream.CacheUsage": CacheUsage,
    "clawstream.CacheControl": CacheControl,
    "clawstream.Message": Message,
    "clawstream.FunctionCall": FunctionCall,
    "clawstream.FunctionSpec": FunctionSpec,
    "clawstream.ModelCall": ModelCall,
    "clawstream.ToolCall": ToolCall,
    "clawstream.StepError": StepError,
    "clawstream.TimelineEntry": TimelineEntry,
    "clawstream.AgentRequest": AgentRequest,
    "clawstream.StepCommand": StepCommand,
    "clawstream.StepResult": StepResult,
    "clawstream.AgentEvent": AgentEvent,
    "clawstream.AgentAnswer": AgentAnswer,
    "clawstream.AttemptRecord": AttemptRecord,
    "clawstream.DeadLetter": DeadLetter,
    "clawstream.ControlFlag": ControlFlag,
    "clawstream.Wakeup": Wakeup,
    "clawstream.Effect": Effect,
    "clawstream.Delegation": Delegation,
    "clawstream.Cancel": Cancel,
    "clawstream.StepDelta": StepDelta,
}
"""Every named record schema and its type (the test walks the schemas through this)."""


def message(role: str, content: str, *, tool_calls: list[FunctionCall] | None = None,
            tool_call_id: str | None = None, name: str | None = None) -> Message:
    return {"role": role, "content": content, "tool_calls": tool_calls or [],
            "tool_call_id": tool_call_id, "name": name}


def empty_usage() -> Usage:
    return {"prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0, "saved_tokens": 0,
            "saved_cost_usd": 0.0}
