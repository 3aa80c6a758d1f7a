"""Tool calls from the local model: the prompt, the grammar's schema, the parse, and the real
SmolLM2 GGUF under the grammar (in-process, no Ray; a constrained call takes seconds)."""

from __future__ import annotations

import json

import jsonschema
import pytest

from clawstream.inference.backends.llama_cpp import LlamaCppBackend, tool_grammar
from clawstream.inference.backends.local_tools import (
    output_schema,
    parse_output,
    prompt_messages,
)
from clawstream.inference.protocol import ChatMessage, ToolCall, ToolFunction

WEATHER = ToolFunction(
    name="get_weather", description="Current weather for a city.",
    parameters={"type": "object", "properties": {"city": {"type": "string"}},
                "required": ["city"], "additionalProperties": False},
)
ADD = ToolFunction(
    name="add_numbers", description="Add two integers.",
    parameters={"type": "object", "properties": {"a": {"type": "integer"},
                                                 "b": {"type": "integer"}},
                "required": ["a", "b"], "additionalProperties": False},
)
TOOLS = [WEATHER, ADD]


def test_schema_offers_an_answer_or_calls_and_only_calls_when_required() -> None:
    auto = output_schema(TOOLS, "auto", max_calls=2)
    jsonschema.validate({"answer": "hi"}, auto)
    jsonschema.validate({"tool_calls": [{"name": "add_numbers", "arguments": {"a": 1, "b": 2}}]},
                        auto)
    for wrong in ({"tool_calls": []},
                  {"tool_calls": [{"name": "add_numbers", "arguments": {"a": "one", "b": 2}}]},
                  {"tool_calls": [{"name": "nope", "arguments": {}}]},
                  {"tool_calls": [{"name": "get_weather", "arguments": {"city": "x"}}] * 3},
                  {"answer": 3}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(wrong, auto)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"answer": "hi"}, output_schema(TOOLS, "required"))


def test_history_is_shown_in_the_shape_the_model_writes() -> None:
    call = ToolCall(id="c1", name="get_weather", arguments='{"city": "Oslo"}')
    messages = [
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="user", content="Weather in Oslo?"),
        ChatMessage(role="assistant", content="", tool_calls=[call]),
        ChatMessage(role="tool", content="sunny, 21 C", tool_call_id="c1"),
    ]
    rendered = prompt_messages(messages, TOOLS, "auto")
    assert [m["role"] for m in rendered] == ["system", "user", "assistant", "tool"]
    assert rendered[0]["content"].startswith("Be brief.\n\nYou can call these tools:")
    assert "- add_numbers(a: integer, b: integer): Add two integers." in rendered[0]["content"]
    assert json.loads(rendered[2]["content"]) == {
        "tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]}
    assert rendered[3]["content"] == "get_weather returned: sunny, 21 C"
    # tool_choice none: the tools are not shown, messages go through as they are
    plain = prompt_messages(messages[:2], TOOLS, "none")
    assert plain == [{"role": m.role, "content": m.content} for m in messages[:2]]


@pytest.mark.parametrize(
    ("text", "answer", "calls"),
    [
        ('{"answer": "Hello there."}', "Hello there.", []),
        ('{"tool_calls": [{"name": "add_numbers", "arguments": {"a": 1, "b": 2}}]}', "",
         [("add_numbers", '{"a": 1, "b": 2}')]),
        # cut off by max_tokens: an answer keeps what was written, a call is dropped
        ('{"answer": "Hello th', "Hello th", []),
        ('{"answer": "line\\nbreak and \\u00e9', "line\nbreak and é", []),
        ('{"tool_calls": [{"name": "add_numbers", "argu', '{"tool_calls": [{"name": '
         '"add_numbers", "argu', []),
    ],
)
def test_parse_output(text: str, answer: str, calls: list[tuple[str, str]]) -> None:
    got_answer, got_calls = parse_output(text, "call_x")
    assert got_answer == answer
    assert [(c.name, c.arguments) for c in got_calls] == calls
    assert [c.id for c in got_calls] == [f"call_x_{i}" for i in range(len(calls))]


def test_a_schema_the_converter_cannot_take_still_gets_a_grammar() -> None:
    odd = ToolFunction(name="odd", parameters={
        "type": "object", "properties": {"x": {"$ref": "https://example.com/remote.json"}}})
    assert tool_grammar([odd, WEATHER], "auto") is not None


@pytest.fixture(scope="module")
def backend() -> LlamaCppBackend:
    return LlamaCppBackend(n_ctx=2048, n_threads=2, seed=0)


@pytest.mark.parametrize("choice", ["auto", "required"])
async def test_smollm2_emits_a_valid_tool_call(backend: LlamaCppBackend, choice: str) -> None:
    """Validity, not quality: the call names an offered tool and its arguments match that
    tool's schema. The prompt asks plainly for a tool, so "auto" calls one too."""
    messages = [ChatMessage(role="system", content="You are a helpful assistant."),
                ChatMessage(role="user", content="Add 17 and 25 with the add_numbers tool.")]
    out = await backend.generate(messages, 64, 0.0, TOOLS, choice)  # type: ignore[arg-type]
    assert out.finish_reason == "tool_calls" and out.tool_calls
    by_name = {tool.name: tool for tool in TOOLS}
    for call in out.tool_calls:
        jsonschema.validate(json.loads(call.arguments), by_name[call.name].parameters)
    if choice == "required":  # (once is enough: a constrained call takes seconds)
        again = await backend.generate(messages, 64, 0.0, TOOLS, choice)
        assert again.tool_calls == out.tool_calls  # greedy: same prompt, same calls and ids


async def test_tool_choice_none_answers_text(backend: LlamaCppBackend) -> None:
    messages = [ChatMessage(role="user", content="Say hello.")]
    out = await backend.generate(messages, 16, 0.0, TOOLS, "none")
    assert out.tool_calls == () and out.text.strip()
    assert not out.text.lstrip().startswith("{")
