"""The contract every generation backend meets, so the Serve deployment never branches on it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
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


@dataclass(frozen=True)
class Sampling:
    """The client's sampling beyond ``temperature``: nucleus mass, stop sequences, seed
    (None or empty: the backend's default). A backend that ignores one says so."""

    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None


DEFAULT_SAMPLING = Sampling()


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
        sampling: Sampling = DEFAULT_SAMPLING,
    ) -> Generation:
        """Answer the conversation; with ``tools``, the model may (``auto``), must
        (``required``) or must not (``none``) answer with calls to them.

        Raise :class:`clawstream.inference.errors.InputRejected` for input the model cannot
        take, ``Overloaded`` / ``BackendFailure`` / ``GenerationTimeout`` for the retryable
        kinds (see :mod:`clawstream.inference.errors`)."""
        ...


Piece = str | Generation
"""What a streaming generation yields: text as it is generated, then the whole answer."""


def split_text(text: str, size: int = 4) -> list[str]:
    """``text`` in pieces of about ``size`` characters, cut after whitespace where there is
    one (joined, they are the text): how a backend that has its answer at once still
    streams it as a model would, token-sized."""
    pieces, current = [], ""
    for char in text:
        current += char
        if len(current) >= size and char.isspace():
            pieces.append(current)
            current = ""
    if current:
        pieces.append(current)
    return pieces


async def paced(text: str, seconds: float) -> AsyncIterator[str]:
    """``text`` in token-sized pieces spread over ``seconds``: a stand-in model's stream
    (the first piece comes early, as a real model's first token does)."""
    pieces = split_text(text)
    for piece in pieces:
        await asyncio.sleep(seconds / len(pieces))
        yield piece


async def stream_generation(
    backend: GenerationBackend,
    messages: Sequence[ChatMessage],
    max_tokens: int,
    temperature: float,
    tools: Sequence[ToolFunction] = (),
    tool_choice: ToolChoice = "auto",
    sampling: Sampling = DEFAULT_SAMPLING,
) -> AsyncIterator[Piece]:
    """The backend's text as it generates it, then its :class:`Generation` (whose text is
    the pieces joined). A backend without a ``stream`` method answers in one piece."""
    stream = getattr(backend, "stream", None)
    if stream is None:
        yield await backend.generate(messages, max_tokens, temperature, tools, tool_choice,
                                     sampling)
        return
    async for piece in stream(messages, max_tokens, temperature, tools, tool_choice, sampling):
        yield piece
