"""The HTTP contract between the Serve app and its callers, shared by both sides.

Server and client import the same models so that a field added on one side cannot
silently go missing on the other. Limits live here too: a request over them is a
validation error (400, never retried) rather than a slow backend failure.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Role = Literal["system", "user", "assistant", "tool"]

MAX_MESSAGES = 256
MAX_CONTENT_CHARS = 32_000
MAX_NEW_TOKENS_LIMIT = 1024
MAX_TEMPERATURE = 2.0
MAX_EMBED_TEXTS = 256
MAX_EMBED_TEXT_CHARS = 8_192

# MiniLM reads at most 256 word pieces; the character cap only bounds request size.
EmbedText = Annotated[str, Field(max_length=MAX_EMBED_TEXT_CHARS)]


MAX_TOOLS = 64
ToolName = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")]


class ToolCall(BaseModel):
    """A model's call of a tool, as OpenAI writes it (``arguments``: a JSON object as text)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=128)
    name: ToolName
    arguments: str = Field(default="{}", max_length=MAX_CONTENT_CHARS)


class ToolFunction(BaseModel):
    """A tool the model may call: OpenAI's ``tools`` entry of type function."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ToolName
    description: str = Field(default="", max_length=4096)
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Role
    content: str | None = Field(default=None, max_length=MAX_CONTENT_CHARS)
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _shape(self) -> ChatMessage:
        """OpenAI's rules: content unless an assistant calls tools; tool calls only from the
        assistant; a tool message names the call it answers."""
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role} message needs content")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only an assistant message can call tools")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id it answers")
        return self

    @property
    def text(self) -> str:
        return self.content or ""


class GenerateRequest(BaseModel):
    """``max_tokens`` None means the deployment's configured default (settings.max_new_tokens)."""

    model_config = ConfigDict(extra="forbid")

    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS_LIMIT)
    temperature: float = Field(default=0.0, ge=0.0, le=MAX_TEMPERATURE)
    model: str | None = None
    tools: list[ToolFunction] = Field(default_factory=list, max_length=MAX_TOOLS)
    tool_choice: Literal["auto", "none", "required"] = "auto"


class GenerationResult(BaseModel):
    """One completion, with the usage and timings the token-rate limiter and traces need."""

    text: str
    model: str
    backend: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None = None
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
    status: Literal["ok", "loading"]
    generation: ComponentHealth | None = None
    embedding: ComponentHealth | None = None


class ErrorBody(BaseModel):
    """Every non-2xx answer of the app has this shape; ``error`` is the machine-readable kind."""

    error: Literal["validation", "overloaded", "backend", "timeout", "not_ready"]
    detail: Any = None
