"""The coordinator's state, as types: a conversation and a request's dedup entry.

Stored as JSON in the worker's RocksDB tables (and their changelogs), so they are plain
dicts; fields added after a release are ``NotRequired`` and read with a default, since a
table written by the earlier release must still load.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict, cast

from clawstream.schemas.records import (
    AgentRequest,
    AnswerStatus,
    CacheUsage,
    Effect,
    FunctionCall,
    Message,
    ReasonKind,
    StepCommand,
    TimelineEntry,
    Usage,
)


class Exchange(TypedDict):
    """One answered turn, kept for the next prompts' context."""

    request_id: str
    user: str
    assistant: str


class Attempt(TypedDict):
    attempt: int
    at_ms: int
    error: str
    infrastructure: NotRequired[bool]
    """Our infrastructure failed, not the step: does not use one of its attempts."""


class Failure(TypedDict):
    """Why the request is failing, while its compensations run."""

    status: AnswerStatus
    reason: str
    reason_kind: NotRequired[ReasonKind]


class ChildRun(TypedDict):
    """A delegation step's child: what it was asked, under which contracts, and the request
    of its current attempt (a retry is a new child, with new ids)."""

    agent: str
    task: str
    max_attempts: int
    timeout_s: float | None
    token_budget: int | None
    """The child's share of the parent's remaining budget (None: no limit from above)."""
    cost_budget_usd: float | None
    quorum: int | None
    """A fan-out with a quorum: the turn is done once this many children answered well."""
    request: AgentRequest | None
    """The child request of the current attempt (sent again as it is on a redelivery)."""
    outcome: str | None
    """None while it counts; "cancelled" or "failed" once given up without failing the
    parent (a quorum met without it, or reachable without it)."""


class StepRun(TypedDict):
    """One step of the request's current turn: its latest attempt, and where it stands."""

    cmd: StepCommand
    retry_at_ms: int | None
    """Set while a failed attempt waits for its retry (the sweep re-issues it then)."""
    attempts: list[Attempt]
    output: str | None
    """Its result once done (a tool's output, a model's text); None while it runs."""
    tool_calls: list[FunctionCall]
    """A model step's decision: the tools it calls (empty: its text is the answer)."""
    child: NotRequired[ChildRun]
    """A delegation step (``cmd`` has step_type ``agent``): its sub-agent request."""


class ActiveRequest(TypedDict):
    """The request a conversation is running, and where it stands."""

    request: AgentRequest
    run: int
    """0, or the redrive number: a redrive runs the plan again under new step keys."""
    step_index: int
    """A plan's next step; for a deciding agent, the steps issued so far (step keys)."""
    steps: list[StepRun]
    """The current turn: one plan step, one model step, or the tool calls it decided."""
    transcript: list[Message]
    """A deciding agent's chat: system, context, question, its calls and their results."""
    taken: int
    """Steps this request has issued (``max_steps``)."""
    notes: str | None
    last_output: str
    timeline: list[TimelineEntry]
    usage: Usage
    effects: list[Effect]
    failure: Failure | None
    cache: NotRequired[list[CacheUsage]]
    agent_version: NotRequired[str]
    """The version of the agent this request runs (routing picked it when it started)."""
    started_at_ms: NotRequired[int]
    """When it started running (after any wait behind an earlier request)."""
    cancelled: NotRequired[str]
    """Why it was cancelled: it issues no new step and fails once its steps in flight are
    back (compensating first)."""


class Spent(TypedDict):
    """A conversation's lifetime spend, checked against its budgets."""

    steps: int
    tokens: int


class Conversation(TypedDict):
    exchanges: list[Exchange]
    active: ActiveRequest | None
    waiting: list[AgentRequest]
    """Requests queued behind the active one (their ``options["run"]`` says which run)."""
    flow_spent: NotRequired[Spent]
    flow_degraded: NotRequired[dict[str, list[str]]]
    """Request id -> why flow control degraded its answer (cut steps, rerouted pools)."""
    agent_versions: NotRequired[dict[str, str]]
    """Agent name -> the version this conversation was routed to: it stays on it while the
    routing rule still names that version (``processors/canary/routing.py``)."""
    cancelled: NotRequired[dict[str, str]]
    """Request id -> reason: cancels that came before their request (a child's cancel and
    its request travel on different topics), honoured when it arrives. Bounded."""


class DedupEntry(TypedDict):
    """The first request seen under a tenant's conversation and idempotency key."""

    request_id: str
    status: Literal["in_progress", "answered"]
    redriven: list[str]
    answer_status: NotRequired[AnswerStatus]
    content: NotRequired[str]
    """Hash of what the request asks (agent, text, lane, options): the same key with other
    content is refused, as payment APIs do."""
    source: NotRequired[str]
    """Where the request was read (topic/partition/offset): the same record read again is
    a redelivery, another record with the same key a duplicate."""
    conflicts: NotRequired[list[str]]
    """Request ids refused for reusing the key with other content (answered once each)."""


def empty_conversation() -> Conversation:
    return {"exchanges": [], "active": None, "waiting": []}


def upgrade(conv: Conversation) -> Conversation:
    """A state written by the release before (one ``pending`` step per request) in this
    release's shape, so requests in flight across an upgrade go on."""
    active = conv["active"]
    if active is None or "steps" in active:
        return conv
    old = cast(dict[str, Any], active)
    pending = old.pop("pending", None)
    runs: list[StepRun] = [] if pending is None else [
        {"cmd": pending, "retry_at_ms": old.pop("retry_at_ms", None),
         "attempts": old.pop("attempts", []), "output": None, "tool_calls": []}]
    old.pop("retry_at_ms", None)
    old.pop("attempts", None)
    active["steps"] = runs
    active["transcript"] = []
    active["taken"] = active["step_index"] + 1
    return conv
