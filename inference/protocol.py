"""The HTTP contract between the Serve app and its callers, shared by both sides.

Server and client import the same models so that a field added on one side cannot
silently go missing on the other. Limits live here too: a request over them is a
validation error (400, never retried) rather than a slow backend failure.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["system", "user", "assistant"]

MAX_MESSAGES = 256
MAX_CONTENT_CHARS = 32_000
MAX_NEW_TOKENS_LIMIT = 1024
MAX_TEMPERATURE = 2.0
MAX_EMBED_TEXTS = 256
MAX_EMBED_TEXT_CHARS = 8_192

GENERATOR_APP_NAME = "clawstream-generator"
"""The Serve application (and, in it, the deployment ``generator``) that generates."""
MODEL_ROUTE_PREFIX = "/model"
"""The generation deployment's own HTTP route: Serve's proxy hands a call under it straight
to a generator replica (no ingress replica in between)."""
GENERATE_PATH = f"{MODEL_ROUTE_PREFIX}/generate"
"""Where callers send generations; ``/generate`` on the app's root still answers, one hop
longer (through the ingress replica)."""
EMBEDDING_ROUTE_PREFIX = "/embedding"
"""The embedding deployment's own route, for the same reason."""
EMBED_PATH = f"{EMBEDDING_ROUTE_PREFIX}/embed"

# MiniLM reads at most 256 word pieces; the character cap only bounds request size.
EmbedText = Annotated[str, Field(max_length=MAX_EMBED_TEXT_CHARS)]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Role
    content: str = Field(max_length=MAX_CONTENT_CHARS)


class GenerateRequest(BaseModel):
    """``max_tokens`` None means the deployment's configured default (settings.max_new_tokens)."""

    model_config = ConfigDict(extra="forbid")

    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS_LIMIT)
    temperature: float = Field(default=0.0, ge=0.0, le=MAX_TEMPERATURE)
    model: str | None = None


class GenerationResult(BaseModel):
    """One completion, with the usage and timings the token-rate limiter and traces need."""

    text: str
    model: str
    backend: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None = None
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
