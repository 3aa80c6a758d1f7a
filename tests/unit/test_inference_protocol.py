"""Request validation: what the app refuses before any model time is spent."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from clawstream.inference.protocol import (
    MAX_EMBED_TEXT_CHARS,
    MAX_EMBED_TEXTS,
    MAX_NEW_TOKENS_LIMIT,
    MAX_TOOL_NAME_CHARS,
    MAX_TOOL_SCHEMA_CHARS,
    MAX_TOOLS,
    EmbedRequest,
    GenerateRequest,
    GenerationResult,
    ToolCall,
)

USER = {"role": "user", "content": "hello"}


def test_defaults_are_greedy_and_leave_max_tokens_to_the_server() -> None:
    request = GenerateRequest.model_validate({"messages": [USER]})
    assert request.temperature == 0.0
    assert request.max_tokens is None
    assert request.model is None


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"messages": []},
        {"messages": [{"role": "tool", "content": "x"}]},
        {"messages": [{"role": "user"}]},
        {"messages": [{"role": "user", "content": 3}]},
        {"messages": [{**USER, "weight": "extra field"}]},
        {"messages": [USER], "max_tokens": 0},
        {"messages": [USER], "max_tokens": MAX_NEW_TOKENS_LIMIT + 1},
        {"messages": [USER], "temperature": -0.1},
        {"messages": [USER], "temperature": 2.5},
        {"messages": [USER], "frequency_penalty": 0.9},
        {"messages": [USER], "top_p": 0},
        {"messages": [USER], "top_p": 1.1},
        {"messages": [USER], "stop": ["a", "b", "c", "d", "e"]},
        {"messages": [USER], "stop": [""]},
        {"messages": [USER], "seed": -1},
        {"messages": "hello"},
    ],
)
def test_generate_rejects(payload: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        GenerateRequest.model_validate(payload)


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"texts": []},
        {"texts": "not a list"},
        {"texts": [1, 2]},
        {"texts": ["x"] * (MAX_EMBED_TEXTS + 1)},
        {"texts": ["ok", "y" * (MAX_EMBED_TEXT_CHARS + 1)]},
    ],
)
def test_embed_rejects(payload: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        EmbedRequest.model_validate(payload)


def test_embed_error_points_at_the_offending_text() -> None:
    with pytest.raises(ValidationError) as info:
        EmbedRequest.model_validate({"texts": ["ok", "y" * (MAX_EMBED_TEXT_CHARS + 1)]})
    assert info.value.errors()[0]["loc"] == ("texts", 1)


# Tool calling ---------------------------------------------------------------------------

WEATHER = {
    "name": "get_weather",
    "description": "Current weather.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
CALL = {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Oslo"}'}
LOOP = [
    USER,
    {"role": "assistant", "content": "", "tool_calls": [CALL]},
    {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
]


def test_a_tool_loop_history_is_accepted() -> None:
    request = GenerateRequest.model_validate(
        {"messages": LOOP, "tools": [WEATHER], "tool_choice": "required"}
    )
    assert request.messages[1].tool_calls == [ToolCall(**CALL)]
    assert request.messages[2].tool_call_id == "call_1"
    assert request.tools[0].parameters["properties"]["city"] == {"type": "string"}


def test_tools_default_to_none_offered_and_auto() -> None:
    request = GenerateRequest.model_validate({"messages": [USER]})
    assert request.tools == [] and request.tool_choice == "auto"


def _tools(count: int) -> list[dict[str, Any]]:
    return [{**WEATHER, "name": f"tool_{i}"} for i in range(count)]


@pytest.mark.parametrize(
    ("payload", "complaint"),
    [
        ({"messages": [{"role": "tool", "content": "x"}]}, "tool_call_id"),
        ({"messages": [USER, {"role": "tool", "content": "x", "tool_call_id": "nope"}]},
         "answers no tool call"),
        # the result comes before the call it answers
        ({"messages": [USER, LOOP[2], LOOP[1]]}, "answers no tool call"),
        ({"messages": [{**USER, "tool_calls": [CALL]}]}, "only assistant"),
        ({"messages": [{**USER, "tool_call_id": "call_1"}]}, "only tool messages"),
        ({"messages": [USER], "tools": [{**WEATHER, "name": "get weather"}]}, "pattern"),
        ({"messages": [USER], "tools": [{**WEATHER, "name": "1st"}]}, "pattern"),
        ({"messages": [USER], "tools": [{**WEATHER, "name": "x" * (MAX_TOOL_NAME_CHARS + 1)}]},
         "at most"),
        ({"messages": [USER], "tools": _tools(MAX_TOOLS + 1)}, "at most"),
        ({"messages": [USER], "tools": [WEATHER, WEATHER]}, "unique"),
        ({"messages": [USER], "tools": [{**WEATHER, "parameters": {"type": "string"}}]},
         '"type": "object"'),
        ({"messages": [USER], "tools": [{**WEATHER, "parameters": {
            "type": "object", "description": "x" * MAX_TOOL_SCHEMA_CHARS}}]}, "characters"),
        ({"messages": [USER], "tool_choice": "required"}, "needs at least one tool"),
        ({"messages": [USER], "tools": [WEATHER], "tool_choice": "sometimes"}, "auto"),
        ({"messages": [USER, {"role": "assistant", "content": "",
                              "tool_calls": [{**CALL, "name": "no spaces allowed"}]}]},
         "pattern"),
        ({"messages": [USER, {"role": "assistant", "content": "",
                              "tool_calls": [{**CALL, "id": ""}]}]}, "at least 1"),
    ],
)
def test_tool_requests_are_refused_with_the_reason(
    payload: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(ValidationError, match=complaint):
        GenerateRequest.model_validate(payload)


def test_the_limits_themselves_are_allowed() -> None:
    request = GenerateRequest.model_validate({
        "messages": [USER],
        "tools": [{**t, "name": t["name"].ljust(MAX_TOOL_NAME_CHARS, "x")}
                  for t in _tools(MAX_TOOLS)],
    })
    assert len(request.tools) == MAX_TOOLS


def test_tool_call_arguments_are_kept_verbatim_even_when_not_json() -> None:
    # The model's mistake is the caller's to report back to the model, not a 400 here.
    call = ToolCall(id="c", name="get_weather", arguments='{"city": ')
    assert call.arguments == '{"city": '


def test_result_carries_tool_calls_and_their_finish_reason() -> None:
    result = GenerationResult.model_validate({
        "text": "", "model": "m", "backend": "b", "prompt_tokens": 3, "completion_tokens": 2,
        "finish_reason": "tool_calls", "tool_calls": [CALL], "replica": "r", "run_ms": 1.0,
    })
    assert result.tool_calls == [ToolCall(**CALL)]
    with pytest.raises(ValidationError):
        GenerationResult.model_validate({**result.model_dump(), "finish_reason": "eos"})
