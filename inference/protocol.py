"""The HTTP contract between the Serve app and its callers, shared by both sides.

Server and client import the same models so that a field added on one side cannot
silently go missing on the other. Limits live here too: a request over them is a
validation error (400, never retried) rather than a slow backend failure.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Role = Literal["system", "user", "assistant", "tool"]
ToolChoice = Literal["auto", "none", "required"]
"""OpenAI's string choices: the model decides, never calls, or must call at least one tool."""
FinishReason = Literal["stop", "length", "tool_calls"]

MAX_MESSAGES = 256
MAX_CONTENT_CHARS = 32_000
MAX_NEW_TOKENS_LIMIT = 1024
MAX_TEMPERATURE = 2.0
MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 64
MAX_EMBED_TEXTS = 256
MAX_EMBED_TEXT_CHARS = 8_192

GENERATOR_APP_NAME = "clawstream-generator"
"""The Serve application (and, in it, the deployment :data:`GENERATOR_DEPLOYMENT`) that
generates with the local model."""
GENERATOR_DEPLOYMENT = "generator"
MODEL_ROUTE_PREFIX = "/model"
"""The generation deployment's own HTTP route: Serve's proxy hands a call under it straight
to a generator replica (no ingress replica in between)."""
GENERATE_PATH = f"{MODEL_ROUTE_PREFIX}/generate"
"""Where callers send generations; ``/generate`` on the app's root still answers, one hop
longer (through the ingress replica)."""
UPSTREAM_APP_NAME = "clawstream-upstream"
"""The Serve application (deployment :data:`UPSTREAM_DEPLOYMENT`) that serves the pools'
OpenAI-compatible upstream models; deployed only when a pool names an upstream."""
UPSTREAM_DEPLOYMENT = "upstream"
UPSTREAM_ROUTE_PREFIX = "/upstream"
"""The upstream deployment's own route: a client sends a request for an upstream model
there, as it sends one for the local model to :data:`GENERATE_PATH` (no ingress hop)."""
UPSTREAM_GENERATE_PATH = f"{UPSTREAM_ROUTE_PREFIX}/generate"
STREAM_SUFFIX = "_stream"
"""A generation route plus this streams the answer as it is generated (NDJSON lines: each
``{"delta": text}``, then ``{"result": GenerationResult}``, or ``{"error": kind, ...}``
when it fails after the first line). Served on the models' own routes, not the ingress."""
INGRESS_GENERATE_PATH = "/generate"
"""The ingress's route: it routes by the request's model (one replica more on the way)."""


def serves_upstream(model: str | None, upstream_models: Collection[str]) -> bool:
    """Whether ``model`` is one of the pools' upstream models, which the upstream
    deployment serves; every other request (null, the local model, an unknown id that the
    local generator rejects) belongs to the local generator. The one rule the ingress and
    the clients route by, so both roads reach the same deployment."""
    return model is not None and model in upstream_models


def generate_path(model: str | None, upstream_models: Collection[str] | None) -> str:
    """Where a client sends a generation: the model's own route when the client knows the
    pools' upstream models (``upstream_models``, from settings), else the ingress for a
    named model (it knows them) and the local generator's route for ``null``."""
    if upstream_models is None:
        return GENERATE_PATH if model is None else INGRESS_GENERATE_PATH
    return UPSTREAM_GENERATE_PATH if serves_upstream(model, upstream_models) else GENERATE_PATH

EMBEDDING_ROUTE_PREFIX = "/embedding"
"""The embedding deployment's own route, for the same reason."""
EMBED_PATH = f"{EMBEDDING_ROUTE_PREFIX}/embed"

# Tool calling. Bounds keep a request's schemas (which become a grammar on the local model,
# and prompt tokens everywhere) small enough that a bad one is refused, not slow.
MAX_TOOLS = 64
MAX_TOOL_NAME_CHARS = 64
MAX_TOOL_DESCRIPTION_CHARS = 4_096
MAX_TOOL_SCHEMA_CHARS = 16_000
MAX_TOOL_CALLS = 32
MAX_TOOL_ARGUMENTS_CHARS = 32_000
MAX_TOOL_CALL_ID_CHARS = 128
TOOL_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]*$"
"""An identifier (hyphens allowed, as OpenAI's function names allow them)."""

ToolName = Annotated[
    str, Field(min_length=1, max_length=MAX_TOOL_NAME_CHARS, pattern=TOOL_NAME_PATTERN)
]

# MiniLM reads at most 256 word pieces; the character cap only bounds request size.
EmbedText = Annotated[str, Field(max_length=MAX_EMBED_TEXT_CHARS)]


class ToolCall(BaseModel):
    """One call the model asked for. ``arguments`` is a JSON object as text, as OpenAI sends
    it; it is not parsed here, because a model may well produce arguments that are not valid
    JSON, and the caller's tool validation turns that into a message the model can fix."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=MAX_TOOL_CALL_ID_CHARS)
    name: ToolName
    arguments: str = Field(default="{}", max_length=MAX_TOOL_ARGUMENTS_CHARS)


class ToolFunction(BaseModel):
    """A tool the model may call: OpenAI's ``function`` object (without the ``type`` wrapper).
    ``parameters`` is a JSON-schema object describing the arguments."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ToolName
    description: str = Field(default="", max_length=MAX_TOOL_DESCRIPTION_CHARS)
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )

    @field_validator("parameters")
    @classmethod
    def _object_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        if value.get("type") != "object":
            raise ValueError('parameters must be a JSON schema with "type": "object"')
        size = len(json.dumps(value, separators=(",", ":")))
        if size > MAX_TOOL_SCHEMA_CHARS:
            raise ValueError(
                f"parameters schema is {size} characters; at most {MAX_TOOL_SCHEMA_CHARS}"
            )
        return value


class ChatMessage(BaseModel):
    """One message of the conversation the model sees.

    An assistant message may carry ``tool_calls`` (its content may then be ""); a ``tool``
    message is the result of one of them and names it in ``tool_call_id``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Role
    content: str = Field(max_length=MAX_CONTENT_CHARS)
    tool_calls: list[ToolCall] | None = Field(default=None, max_length=MAX_TOOL_CALLS)
    tool_call_id: str | None = Field(
        default=None, min_length=1, max_length=MAX_TOOL_CALL_ID_CHARS
    )
    name: str | None = Field(default=None, min_length=1, max_length=MAX_TOOL_NAME_CHARS)

    @model_validator(mode="after")
    def _role_fields(self) -> ChatMessage:
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError(f"only assistant messages carry tool_calls, not {self.role}")
        if self.role == "tool" and self.tool_call_id is None:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        if self.role != "tool" and self.tool_call_id is not None:
            raise ValueError(f"only tool messages carry a tool_call_id, not {self.role}")
        return self


class GenerateRequest(BaseModel):
    """``max_tokens`` None means the deployment's configured default (settings.max_new_tokens).
``top_p``, ``stop`` and ``seed`` are the client's sampling (None or empty: the backend's).

    ``tools`` are offered to the model with ``tool_choice``; the answer is text, tool calls,
    or both (:class:`GenerationResult`). A ``tool`` message must answer a call made by an
    earlier assistant message, as OpenAI requires: checked here so that a broken history
    is a validation error (400) before any model time, on every backend alike.
    """

    model_config = ConfigDict(extra="forbid")

    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS_LIMIT)
    temperature: float = Field(default=0.0, ge=0.0, le=MAX_TEMPERATURE)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: list[Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]] = Field(
        default_factory=list, max_length=MAX_STOP_SEQUENCES)
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    model: str | None = None
    tools: list[ToolFunction] = Field(default_factory=list, max_length=MAX_TOOLS)
    tool_choice: ToolChoice = "auto"

    @model_validator(mode="after")
    def _consistent(self) -> GenerateRequest:
        names = [tool.name for tool in self.tools]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"tool names must be unique: {duplicates}")
        if self.tool_choice == "required" and not self.tools:
            raise ValueError('tool_choice "required" needs at least one tool')
        called: set[str] = set()
        for index, message in enumerate(self.messages):
            if message.tool_calls:
                called.update(call.id for call in message.tool_calls)
            if message.role == "tool" and message.tool_call_id not in called:
                raise ValueError(
                    f"messages[{index}]: tool_call_id {message.tool_call_id!r} answers no "
                    "tool call of an earlier assistant message"
                )
        return self


class GenerationResult(BaseModel):
    """One completion, with the usage and timings the token-rate limiter and traces need."""

    text: str
    model: str
    backend: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason = "stop"
    tool_calls: list[ToolCall] = Field(default_factory=list)
    replica: str
    queue_ms: float | None = None
    run_ms: float


class EmbedRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    texts: list[EmbedText] = Field(min_length=1, max_length=MAX_EMBED_TEXTS)


class EmbeddingResult(BaseModel):
    model: str
    dim: int
    vectors: list[list[float]]


class ComponentHealth(BaseModel):
    model: str
    backend: str


class HealthReport(BaseModel):
    """``generation`` is the default model (a request with ``model`` null goes there);
    ``models`` lists every generation model the app serves, local and upstream."""

    status: Literal["ok", "loading"]
    generation: ComponentHealth | None = None
    embedding: ComponentHealth | None = None
    models: list[ComponentHealth] = Field(default_factory=list)


REPLICAS_PATH = "/replicas"
"""The ingress's report of running replicas per Serve deployment (the dispatcher's
tokens/s limiter scales a pool's capacity by it)."""


class ReplicaReport(BaseModel):
    """Serve's own count of RUNNING replicas, keyed ``app/deployment``, over every app of
    the cluster (a vLLM app deployed beside ours too)."""

    running: dict[str, int]


class ErrorBody(BaseModel):
    """Every non-2xx answer of the app has this shape; ``error`` is the machine-readable kind."""

    error: Literal["validation", "overloaded", "backend", "timeout", "not_ready"]
    detail: Any = None
