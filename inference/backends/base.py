"""The contract every generation backend meets, so the Serve deployment never branches on it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from clawstream.inference.protocol import ChatMessage


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None = None


class GenerationBackend(Protocol):
    """A chat model. ``name`` goes into every response's ``backend`` field."""

    name: str
    model_id: str

    async def generate(
        self, messages: Sequence[ChatMessage], max_tokens: int, temperature: float
    ) -> Generation:
        """Raise :class:`clawstream.inference.errors.InputRejected` for input the model cannot
        take."""
        ...
