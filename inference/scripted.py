"""A scripted model for the tests: a TEST FIXTURE, there only when the stack is started with
``CLAWSTREAM_FAULT_INJECTION=true`` (like ``/faults``), and named so in every answer
(``backend`` and ``model`` are "scripted-fixture").

A test registers a script (``POST /script``): a marker string and a list of turns, each a
text answer and/or tool calls, with an optional delay and an optional error. A /generate
call whose messages contain the marker is answered by turn k, where k is read from the
request itself: the number of assistant messages after the last user message. So a tool
loop (user, assistant calls, tool results, assistant calls, ...) walks the script turn by
turn, a retry of a turn gets the same turn, and no replica needs to remember where a
conversation is. Only an error's ``times`` is counted down in the replica (a retry is the
same request, so nothing in it can say "this is the second attempt"); scripts and counters
live in the replica that received them, which is why the test stack runs one generator
replica.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from clawstream.inference.backends.base import DEFAULT_SAMPLING, Generation, Piece, Sampling, paced
from clawstream.inference.backends.simulated import approx_prompt_tokens, approx_tokens
from clawstream.inference.errors import (
    BackendFailure,
    GenerationTimeout,
    InputRejected,
    Overloaded,
)
from clawstream.inference.protocol import (
    MAX_TOOL_ARGUMENTS_CHARS,
    MAX_TOOL_CALLS,
    ChatMessage,
    ToolCall,
    ToolChoice,
    ToolFunction,
    ToolName,
)

SCRIPTED_MODEL_ID = "scripted-fixture"
MAX_SCRIPT_TURNS = 256
MAX_SCRIPTS = 10_000
MAX_TURN_DELAY_MS = 60_000


class ScriptedCall(BaseModel):
    """A tool call to answer with. ``arguments`` as an object, or as text to hand the
    caller something that is not valid JSON on purpose. ``id`` defaults to one derived
    from the marker, the turn and the position."""

    model_config = ConfigDict(extra="forbid")

    name: ToolName
    arguments: dict[str, Any] | str = Field(default_factory=dict)
    id: str | None = Field(default=None, min_length=1, max_length=128)

    def arguments_text(self) -> str:
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments)


class ScriptedError(BaseModel):
    """Fail this turn ``times`` times before answering it: 429/503 as overload (503 with
    Retry-After), 500 as a backend failure, 504 as a timeout, 400 as invalid input."""

    model_config = ConfigDict(extra="forbid")

    status: Literal[400, 429, 500, 503, 504]
    times: int = Field(default=1, ge=1)
    retry_after_s: float | None = Field(default=None, ge=0)


class ScriptTurn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str | None = None
    tool_calls: list[ScriptedCall] | None = Field(default=None, max_length=MAX_TOOL_CALLS)
    delay_ms: float = Field(default=0.0, ge=0, le=MAX_TURN_DELAY_MS)
    error: ScriptedError | None = None

    @model_validator(mode="after")
    def _answers_something(self) -> ScriptTurn:
        if self.text is None and not self.tool_calls:
            raise ValueError("a turn answers with text, tool_calls, or both")
        for call in self.tool_calls or ():
            if len(call.arguments_text()) > MAX_TOOL_ARGUMENTS_CHARS:
                raise ValueError(f"arguments of {call.name} are over {MAX_TOOL_ARGUMENTS_CHARS}")
        return self


class Script(BaseModel):
    """Registering a marker again replaces its script (and its error counters)."""

    model_config = ConfigDict(extra="forbid")

    marker: str = Field(min_length=8, max_length=200)
    turns: list[ScriptTurn] = Field(min_length=1, max_length=MAX_SCRIPT_TURNS)


def turn_index(messages: Sequence[ChatMessage]) -> int:
    """Assistant messages after the last user message: 0 for a fresh question, 1 after the
    first round of tool calls and their results, and so on."""
    count = 0
    for message in reversed(messages):
        if message.role == "user":
            break
        if message.role == "assistant":
            count += 1
    return count


def _raise(error: ScriptedError, message: str) -> None:
    if error.status in (429, 503):
        raise Overloaded(message, error.retry_after_s)
    if error.status == 500:
        raise BackendFailure(message)
    if error.status == 504:
        raise GenerationTimeout(message)
    raise InputRejected(message)


class ScriptedFixtureBackend:
    """The scripts registered with this replica, answering the requests that carry a
    marker. A :class:`clawstream.inference.backends.GenerationBackend`."""

    name = SCRIPTED_MODEL_ID
    model_id = SCRIPTED_MODEL_ID

    def __init__(self) -> None:
        self._scripts: dict[str, Script] = {}
        self._errors_left: dict[tuple[str, int], int] = {}

    def add(self, script: Script) -> None:
        if script.marker not in self._scripts and len(self._scripts) >= MAX_SCRIPTS:
            raise InputRejected(f"at most {MAX_SCRIPTS} scripts per replica")
        self._scripts[script.marker] = script.model_copy(deep=True)
        for key in [k for k in self._errors_left if k[0] == script.marker]:
            del self._errors_left[key]
        for index, turn in enumerate(script.turns):
            if turn.error is not None:
                self._errors_left[(script.marker, index)] = turn.error.times

    def script_for(self, messages: Sequence[ChatMessage]) -> Script | None:
        """The script whose marker one of the messages contains, if any."""
        if not self._scripts:
            return None
        for message in messages:
            for marker, script in self._scripts.items():
                if marker in message.content:
                    return script
        return None

    def claims(self, messages: Sequence[ChatMessage]) -> bool:
        return self.script_for(messages) is not None

    def _turn(self, messages: Sequence[ChatMessage]) -> tuple[Script, int, ScriptTurn]:
        script = self.script_for(messages)
        if script is None:
            raise InputRejected("no script's marker is in these messages")
        k = turn_index(messages)
        if k >= len(script.turns):
            raise InputRejected(
                f"script {script.marker!r} has {len(script.turns)} turns; this request asks "
                f"for turn {k + 1} ({k} assistant messages after the last user message)"
            )
        return script, k, script.turns[k]

    async def generate(
        self,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        temperature: float,
        tools: Sequence[ToolFunction] = (),
        tool_choice: ToolChoice = "auto",
        sampling: Sampling = DEFAULT_SAMPLING,
    ) -> Generation:
        """Turn k of the script; tools, tool_choice, max_tokens, temperature and sampling
        do not change what a script says (a test that wants a wrong call scripts one)."""
        script, k, turn = self._turn(messages)
        if turn.delay_ms:
            await asyncio.sleep(turn.delay_ms / 1000.0)
        left = self._errors_left.get((script.marker, k), 0)
        if turn.error is not None and left > 0:
            self._errors_left[(script.marker, k)] = left - 1
            _raise(turn.error, f"scripted HTTP {turn.error.status} for turn {k + 1} of "
                               f"{script.marker!r} ({left - 1} more)")
        return _generation(script, k, turn, messages)

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        temperature: float,
        tools: Sequence[ToolFunction] = (),
        tool_choice: ToolChoice = "auto",
        sampling: Sampling = DEFAULT_SAMPLING,
    ) -> AsyncIterator[Piece]:
        """A text turn in token-sized pieces, its delay spread over them (the first piece
        comes early, as from a model); a turn with tool calls or a pending error comes
        whole, as :meth:`generate` answers it."""
        script, k, turn = self._turn(messages)
        if turn.tool_calls or self._errors_left.get((script.marker, k), 0) > 0:
            yield await self.generate(messages, max_tokens, temperature, tools, tool_choice,
                                      sampling)
            return
        async for piece in paced(turn.text or "", turn.delay_ms / 1000.0):
            yield piece
        yield _generation(script, k, turn, messages)


def _generation(script: Script, k: int, turn: ScriptTurn, messages: Sequence[ChatMessage]
                ) -> Generation:
    seed = hashlib.sha256(script.marker.encode()).hexdigest()[:8]
    calls = tuple(
        ToolCall(id=call.id or f"call_{seed}_{k}_{i}", name=call.name,
                 arguments=call.arguments_text())
        for i, call in enumerate(turn.tool_calls or ())
    )
    text = turn.text or ""
    return Generation(
        text=text,
        prompt_tokens=approx_prompt_tokens(messages),
        completion_tokens=approx_tokens(text + "".join(c.name + c.arguments for c in calls)),
        finish_reason="tool_calls" if calls else "stop",
        tool_calls=calls,
    )
