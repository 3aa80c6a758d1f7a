"""What clients may send, as pydantic models: every field typed and bounded, so nothing
unvalidated reaches Kafka. Unknown fields are refused on the native API; on the OpenAI
edge they are accepted and dropped (clients send many optional parameters this runtime
does not use, and refusing them would break unchanged clients)."""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from clawstream.inference.protocol import (
    MAX_TOOL_ARGUMENTS_CHARS,
    MAX_TOOL_CALL_ID_CHARS,
    MAX_TOOL_CALLS,
    MAX_TOOLS,
    ToolFunction,
    ToolName,
)
from clawstream.processors.caching.control import MAX_AGE_OPTIONS, NO_CACHE_OPTIONS
from clawstream.schemas.records import FunctionCall, FunctionSpec, Message, message

AgentName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
ConversationName = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$")]
UserName = Annotated[str, StringConstraints(pattern=r"^[^\x00-\x1f\x7f]{1,256}$")]
OPTION_NAMES = (*NO_CACHE_OPTIONS, *MAX_AGE_OPTIONS, "max_steps", "token_budget", "stream")
"""Request options a client may set; the others (``redrive_of``, ``run``) are the
runtime's own and must not come from outside. ``stream``: the request's model steps
publish their output as it is generated (``event: delta`` on its event stream)."""
OptionName = Literal["no_cache", "no-cache", "max_cache_age_s", "max-cache-age-s",
                     "max_steps", "token_budget", "stream"]
OptionValue = Annotated[str, StringConstraints(max_length=64)]
Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class Lenient(BaseModel):
    """An OpenAI-shaped object: fields this edge does not read are dropped, not refused."""

    model_config = ConfigDict(extra="ignore")


class TextPart(Lenient):
    """A content part; only text is understood (images and audio are refused, by field)."""

    type: Literal["text"]
    text: str


class CalledFunction(Lenient):
    name: ToolName
    arguments: Annotated[str, StringConstraints(max_length=MAX_TOOL_ARGUMENTS_CHARS)] = "{}"


class MessageToolCall(Lenient):
    """A tool call an assistant message made (the client sends it back with the results)."""

    id: Annotated[str, StringConstraints(min_length=1, max_length=MAX_TOOL_CALL_ID_CHARS)]
    type: Literal["function"] = "function"
    function: CalledFunction


class ToolDefinition(Lenient):
    """A tool the client offers the model (OpenAI's ``{"type": "function", "function"}``);
    checked as the inference app will check it, so a bad one is a 400 here."""

    type: Literal["function"]
    function: ToolFunction


class ChatMessage(Lenient):
    role: Role
    content: str | list[TextPart] | None = None
    name: Annotated[str, StringConstraints(max_length=64)] | None = None
    tool_calls: list[MessageToolCall] | None = Field(default=None, max_length=MAX_TOOL_CALLS)
    tool_call_id: Annotated[
        str, StringConstraints(min_length=1, max_length=MAX_TOOL_CALL_ID_CHARS)] | None = None

    @model_validator(mode="after")
    def _role_fields(self) -> ChatMessage:
        if self.tool_calls and self.role != "assistant":
            raise ValueError(f"only assistant messages carry tool_calls, not {self.role}")
        if self.role == "tool" and self.tool_call_id is None:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class RequestBody(BaseModel):
    """``POST /v1/requests``: ask an agent, within a conversation."""

    model_config = ConfigDict(extra="forbid")
    agent: AgentName
    conversation: ConversationName | None = Field(
        default=None, description="The conversation to continue; a new one when left out.")
    text: str | None = Field(default=None, min_length=1)
    messages: list[ChatMessage] | None = Field(default=None, min_length=1, max_length=256)
    options: dict[OptionName, OptionValue] = Field(default_factory=dict)
    lane: Literal["interactive", "batch"] = "interactive"
    user: UserName | None = None
    deadline_s: float | None = Field(default=None, gt=0, le=86_400)

    @model_validator(mode="after")
    def _one_question(self) -> RequestBody:
        if (self.text is None) == (self.messages is None):
            raise ValueError("give either text or messages")
        return self


MAX_STOP_SEQUENCES = 4
MAX_SEED = 2**32 - 1
StopSequence = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class OverCap(ValueError):
    """A client's ``max_tokens`` over the settings' cap (the edge answers 400 naming it)."""

    def __init__(self, field: str, cap: int) -> None:
        super().__init__(f"at most {cap} tokens")
        self.field = field
        self.cap = cap


class StreamOptions(Lenient):
    include_usage: bool | None = None


class ChatCompletionBody(Lenient):
    """``POST /v1/chat/completions``, the fields this edge reads."""

    model: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    messages: list[ChatMessage] = Field(min_length=1, max_length=1024)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=None, ge=1, le=1)
    user: UserName | None = None
    prompt_cache_key: Annotated[str, StringConstraints(min_length=1, max_length=512)] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: StopSequence | list[StopSequence] | None = Field(default=None)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    tools: list[ToolDefinition] | None = Field(default=None, max_length=MAX_TOOLS)

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        return value

    def sampling_options(self, max_tokens_cap: int) -> dict[str, str]:
        """The client's sampling as request options (a governed call's model step uses
        them); 400 naming the field for a ``max_tokens`` over the cap."""
        options: dict[str, str] = {}
        limit = self.max_completion_tokens or self.max_tokens
        if limit is not None:
            if limit > max_tokens_cap:
                field = "max_completion_tokens" if self.max_completion_tokens else "max_tokens"
                raise OverCap(field, max_tokens_cap)
            options["max_tokens"] = str(limit)
        for name in ("temperature", "top_p", "seed"):
            value = getattr(self, name)
            if value is not None:
                options[name] = str(value)
        if self.stop is not None:
            options["stop"] = json.dumps([self.stop] if isinstance(self.stop, str) else self.stop)
        return options

    @model_validator(mode="after")
    def _unique_tools(self) -> ChatCompletionBody:
        names = [tool.function.name for tool in self.tools or ()]
        if len(names) != len(set(names)):
            raise ValueError("tools: each tool name once")
        return self


def last_user_text(messages: list[ChatMessage]) -> tuple[str, int]:
    """The question an agent answers today: the last user message, and its index.

    Until agents take messages with roles (the agents issue), the conversation's earlier
    turns come from the coordinator's own state (pass a conversation), not from the
    messages the client resends."""
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].role == "user":
            return messages[index].text(), index
    raise ValueError("no user message")


ROLES = {"developer": "system", "function": "tool"}
"""Roles the model's API does not have, as the ones it does."""


def record_messages(messages: list[ChatMessage]) -> list[Message]:
    """The client's chat as the request event carries it (a governed model call sends it to
    the model as it is)."""
    out = []
    for m in messages:
        calls: list[FunctionCall] = [
            {"id": c.id, "name": c.function.name, "arguments_json": c.function.arguments}
            for c in m.tool_calls or ()]
        role = ROLES.get(m.role, m.role)
        out.append(message(role, m.text(), tool_calls=calls,
                           tool_call_id=m.tool_call_id if role == "tool" else None,
                           name=m.name or None))
    return out


def record_tools(tools: list[ToolDefinition] | None) -> list[FunctionSpec]:
    return [{"name": t.function.name, "description": t.function.description,
             "parameters_json": json.dumps(t.function.parameters, separators=(",", ":"))}
            for t in tools or ()]


def question_text(messages: list[ChatMessage]) -> str:
    """A governed call's request text (what logs, caches and budgets name it by): the last
    user message, else the last message with any text."""
    try:
        return last_user_text(messages)[0]
    except ValueError:
        return next((m.text() for m in reversed(messages) if m.text().strip()), "")
