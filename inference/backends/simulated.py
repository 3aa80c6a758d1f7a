"""A stand-in model for load tests: fixed latency, deterministic text, no weights.

It measures the system around the model (queues, limits, retries) without paying for
the model. It says what it is: ``name`` and every response's ``backend`` are
"simulated", so its numbers can never be mistaken for the real model's.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator, Sequence

from clawstream.inference.backends.base import DEFAULT_SAMPLING, Generation, Piece, Sampling, paced
from clawstream.inference.protocol import ChatMessage, ToolCall, ToolChoice, ToolFunction

SIMULATED_MODEL_ID = "simulated-echo"

_WORDS = (
    "agent reads request plans step calls tool waits result checks budget writes answer cites "
    "each source care queue moves event lands log replay the and a for with"
)
_VOCABULARY = tuple(_WORDS.split())

# Chat templates add a few tokens per message (role markers, separators).
_TEMPLATE_TOKENS_PER_MESSAGE = 4


def approx_tokens(text: str) -> int:
    """About one token per four characters, the usual rule of thumb for English BPE."""
    return max(1, (len(text) + 3) // 4)


def approx_prompt_tokens(messages: Sequence[ChatMessage]) -> int:
    """What a chat template would make of ``messages``, roughly: content, tool calls and a
    few tokens of role markers per message."""
    total = 0
    for message in messages:
        total += approx_tokens(message.content) + _TEMPLATE_TOKENS_PER_MESSAGE
        for call in message.tool_calls or ():
            total += approx_tokens(call.name + call.arguments)
    return total


def prompt_digest(messages: Sequence[ChatMessage]) -> bytes:
    hasher = hashlib.sha256()
    for message in messages:
        hasher.update(message.role.encode())
        hasher.update(b"\x00")
        hasher.update(message.content.encode())
        # Tool fields only when present, so plain prompts keep the digest they always had.
        for call in message.tool_calls or ():
            hasher.update(f"\x02{call.id}\x00{call.name}\x00{call.arguments}".encode())
        if message.tool_call_id is not None:
            hasher.update(f"\x03{message.tool_call_id}".encode())
        hasher.update(b"\x01")
    return hasher.digest()


class SimulatedBackend:
    """Answers after ``delay_ms`` with text that depends only on the prompt and max_tokens."""

    name = "simulated"
    model_id = SIMULATED_MODEL_ID

    def __init__(self, delay_ms: float = 20.0) -> None:
        self.delay_ms = delay_ms

    async def generate(
        self,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        temperature: float,
        tools: Sequence[ToolFunction] = (),
        tool_choice: ToolChoice = "auto",
        sampling: Sampling = DEFAULT_SAMPLING,
    ) -> Generation:
        """With ``tool_choice="required"`` it calls one of ``tools`` (picked from the prompt's
        digest) with empty arguments; otherwise it answers text. temperature is accepted for
        interface parity and deliberately ignored, as is ``sampling``: load tests need
        repeatable output regardless of sampling parameters."""
        digest = prompt_digest(messages)
        await asyncio.sleep(self.delay_ms / 1000.0)
        self._inject_faults(digest)
        if tools and tool_choice == "required":
            return self.call_tool(messages, tools, digest)
        return self.answer(messages, max_tokens, digest)

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        temperature: float,
        tools: Sequence[ToolFunction] = (),
        tool_choice: ToolChoice = "auto",
        sampling: Sampling = DEFAULT_SAMPLING,
    ) -> AsyncIterator[Piece]:
        """The text :meth:`generate` answers, in pieces spread over ``delay_ms``; a tool
        call comes whole."""
        if tools and tool_choice == "required":
            yield await self.generate(messages, max_tokens, temperature, tools, tool_choice,
                                      sampling)
            return
        digest = prompt_digest(messages)
        self._inject_faults(digest)
        generation = self.answer(messages, max_tokens, digest)
        async for piece in paced(generation.text, self.delay_ms / 1000.0):
            yield piece
        yield generation

    @staticmethod
    def call_tool(
        messages: Sequence[ChatMessage], tools: Sequence[ToolFunction], digest: bytes
    ) -> Generation:
        tool = tools[digest[0] % len(tools)]
        call = ToolCall(id=f"call_{digest.hex()[:12]}", name=tool.name, arguments="{}")
        return Generation(
            text="",
            prompt_tokens=approx_prompt_tokens(messages),
            completion_tokens=approx_tokens(call.name + call.arguments),
            finish_reason="tool_calls",
            tool_calls=(call,),
        )

    def _inject_faults(self, digest: bytes) -> None:
        """Hook for a configurable fault rate (raise BackendFailure / Overloaded); none yet."""

    @staticmethod
    def answer(
        messages: Sequence[ChatMessage], max_tokens: int, digest: bytes | None = None
    ) -> Generation:
        digest = digest if digest is not None else prompt_digest(messages)
        rng = random.Random(digest)
        # Between a quarter of max_tokens and all of it, like a model that sometimes stops.
        completion_tokens = rng.randint(max(1, max_tokens // 4), max_tokens)
        words = [rng.choice(_VOCABULARY) for _ in range(completion_tokens)]
        text = f"[simulated {digest.hex()[:8]}] " + " ".join(words)
        return Generation(
            text=text,
            prompt_tokens=approx_prompt_tokens(messages),
            completion_tokens=completion_tokens,
            finish_reason="length" if completion_tokens == max_tokens else "stop",
        )
