"""Tool calls and loops of the local model, before and after the grammar and the repeat
penalty: ``just bench tool_calls [--runs N]``.

In-process llama.cpp (no stack), on a fixed set of prompts:

- tool prompts (each plainly asks for one of three tools): valid-call rate (the output is
  calls to offered tools whose arguments match their schemas), right-tool rate, and the
  rate of plain-text answers where a call was asked for;
- chat prompts (no tools): the share of answers that loop (a 4-word sequence three times
  or more);
- tokens/s of each mode (completion tokens over wall time, median of the runs).

"before" is SmolLM2 told about the tools in the prompt, no grammar, no repeat penalty
(llama-cpp-python's default 1.0); "after" is the backend as shipped. Greedy, so every run
gives the same text and only the times vary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import jsonschema

from benchmarks.common import console
from clawstream.inference.backends.llama_cpp import DEFAULT_REPEAT_PENALTY, LlamaCppBackend
from clawstream.inference.backends.local_tools import parse_output, prompt_messages
from clawstream.inference.protocol import ChatMessage, ToolCall, ToolFunction

TOOLS = [
    ToolFunction(name="get_weather", description="Current weather for a city.",
                 parameters={"type": "object", "properties": {"city": {"type": "string"}},
                             "required": ["city"], "additionalProperties": False}),
    ToolFunction(name="add_numbers", description="Add two integers.",
                 parameters={"type": "object", "properties": {"a": {"type": "integer"},
                                                              "b": {"type": "integer"}},
                             "required": ["a", "b"], "additionalProperties": False}),
    ToolFunction(name="search_docs", description="Search the documentation.",
                 parameters={"type": "object", "properties": {"query": {"type": "string"}},
                             "required": ["query"], "additionalProperties": False}),
]
TOOL_PROMPTS = [
    ("What is the weather in Paris?", "get_weather"),
    ("Use the get_weather tool for Berlin.", "get_weather"),
    ("Is it raining in Tokyo right now?", "get_weather"),
    ("Check the weather in Oslo for me.", "get_weather"),
    ("Add 2 and 3.", "add_numbers"),
    ("What is 17 plus 25? Use add_numbers.", "add_numbers"),
    ("Please add 120 and 7.", "add_numbers"),
    ("Sum 9 and 10 with the tool.", "add_numbers"),
    ("Search the docs for retries.", "search_docs"),
    ("Find the documentation about caches.", "search_docs"),
    ("Look up 'dead letter queue' in the docs.", "search_docs"),
    ("Use search_docs to find how lanes work.", "search_docs"),
]
CHAT_PROMPTS = [
    "Write a short poem about the sea.",
    "Explain what a message queue is.",
    "Tell a long story about a lighthouse keeper.",
    "List some fruits.",
    "Describe your favourite city.",
    "What makes a good team?",
]
SYSTEM = ChatMessage(role="system", content="You are a helpful assistant.")
MAX_TOKENS = 64


def _valid(calls: Sequence[ToolCall]) -> bool:
    schemas = {tool.name: tool.parameters for tool in TOOLS}
    if not calls:
        return False
    for call in calls:
        if call.name not in schemas:
            return False
        try:
            jsonschema.validate(json.loads(call.arguments), schemas[call.name])
        except (ValueError, jsonschema.ValidationError):
            return False
    return True


def _loops(text: str) -> bool:
    words = text.split()
    grams = Counter(tuple(words[i:i + 4]) for i in range(len(words) - 3))
    return any(count >= 3 for count in grams.values())


def _before(backend: LlamaCppBackend, messages: list[ChatMessage],
            tools: Sequence[ToolFunction]) -> tuple[str, tuple[ToolCall, ...], int]:
    """The model as it was: the tools described in the prompt, nothing enforcing them."""
    llama: Any = backend._llama
    llama.reset()
    result = llama.create_chat_completion(
        messages=prompt_messages(messages, tools, "auto"), max_tokens=MAX_TOKENS,
        temperature=0.0, repeat_penalty=1.0)
    text = result["choices"][0]["message"]["content"] or ""
    answer, calls = parse_output(text, "call") if tools else (text, ())
    return answer, calls, int(result["usage"]["completion_tokens"])


async def _after(backend: LlamaCppBackend, messages: list[ChatMessage],
                 tools: Sequence[ToolFunction]) -> tuple[str, tuple[ToolCall, ...], int]:
    out = await backend.generate(messages, MAX_TOKENS, 0.0, tools, "auto")
    return out.text, out.tool_calls, out.completion_tokens


async def _run(backend: LlamaCppBackend, mode: str) -> dict[str, float]:
    valid = right = text_instead = looping = 0
    tokens = 0
    clock = time.perf_counter()
    for prompt, wanted in TOOL_PROMPTS:
        messages = [SYSTEM, ChatMessage(role="user", content=prompt)]
        if mode == "before":
            _, calls, used = _before(backend, messages, TOOLS)
        else:
            _, calls, used = await _after(backend, messages, TOOLS)
        tokens += used
        valid += _valid(calls)
        right += _valid(calls) and calls[0].name == wanted
        text_instead += not calls
    tool_s = time.perf_counter() - clock
    tool_tokens = tokens
    clock = time.perf_counter()
    for prompt in CHAT_PROMPTS:
        messages = [SYSTEM, ChatMessage(role="user", content=prompt)]
        if mode == "before":
            text, _, used = _before(backend, messages, ())
        else:
            text, _, used = await _after(backend, messages, ())
        tokens += used
        looping += _loops(text)
    chat_s = time.perf_counter() - clock
    n = len(TOOL_PROMPTS)
    return {"valid": valid / n, "right": right / n, "text": text_instead / n,
            "loops": looping / len(CHAT_PROMPTS),
            "tool_tps": tool_tokens / tool_s, "chat_tps": (tokens - tool_tokens) / chat_s}


async def main(runs: int, threads: int) -> None:
    backend = LlamaCppBackend(n_threads=threads, repeat_penalty=DEFAULT_REPEAT_PENALTY)
    results: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    for _ in range(runs):
        for mode in results:
            results[mode].append(await _run(backend, mode))
    console.print(f"SmolLM2-135M, {len(TOOL_PROMPTS)} tool prompts, {len(CHAT_PROMPTS)} chat "
                  f"prompts, max_tokens {MAX_TOKENS}, {threads} threads, {runs} runs (medians)")
    console.print(f"{'mode':8} {'valid':>6} {'right':>6} {'text':>6} {'loops':>6} "
                  f"{'tool tok/s':>10} {'chat tok/s':>10}")
    for mode, rows in results.items():
        med = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
        console.print(f"{mode:8} {med['valid']:6.0%} {med['right']:6.0%} {med['text']:6.0%} "
                      f"{med['loops']:6.0%} {med['tool_tps']:10.1f} {med['chat_tps']:10.1f}")


if __name__ == "__main__":
    import asyncio

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.threads))
