"""The contract every generation backend meets, so the Serve deployment never branches on it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from clawstream.inference.protocol import (
    ChatMessage,
    FinishReason,
    ToolCall,
    ToolChoice,
    ToolFunction,
)


@dataclass(frozen=True)
class Generation:
    """What a backend answered: text and/or tool calls, with the usage it reports.

    ``finish_reason`` is "tool_calls" whenever ``tool_calls`` is not empty.
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason = "stop"
    tool_calls: tuple[ToolCall, ...] = ()


class GenerationBackend(Protocol):
    """A chat model. ``name`` goes into every response's ``backend`` field."""

    name: str
    model_id: str

    async def generate(
        self,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        temperature: float,
        tools: Sequence[ToolFunction] = (),
        tool_choice: ToolChoice = "auto",
    ) -> Generation:
        """Answer the conversation; with ``tools``, the model may (``auto``), must
        (``required``) or must not (``none``) answer with calls to them.

        Raise :class:`clawstream.inference.errors.InputRejected` for input the model cannot
        take, ``Overloaded`` / ``BackendFailure`` / ``GenerationTimeout`` for the retryable
        kinds (see :mod:`clawstream.inference.errors`)."""
        ...
