"""The models behind the deployed Serve app: the local SmolLM2 with tools, an upstream
OpenAI-compatible server (llama.cpp's own, behind a fault proxy), and the scripted fixture.

Needs the ``stack`` fixture (tests/conftest.py): its ``remote`` pool is served by the
upstream; ``upstream_proxy`` starts that server and the proxy.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jsonschema
import pytest

from clawstream.config import Settings, upstream_models
from clawstream.inference.client import (
    GenerationResult,
    InferenceBackendError,
    InferenceClient,
    InferenceOverloaded,
    InferenceTimeout,
    InferenceValidationError,
    ToolCall,
)
from clawstream.inference.model_files import GENERATION_MODEL_ID
from clawstream.inference.scripted import SCRIPTED_MODEL_ID
from tests.integration import upstream

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

WEATHER: dict[str, Any] = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]},
}
ADD: dict[str, Any] = {
    "name": "add_numbers",
    "description": "Add two integers.",
    "parameters": {"type": "object",
                   "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                   "required": ["a", "b"]},
}


@pytest.fixture
async def client(stack: Settings) -> AsyncIterator[InferenceClient]:
    async with InferenceClient(stack.serve_url, timeout=180.0) as inference:
        yield inference


def _assert_valid_calls(result: GenerationResult, tools: list[dict[str, Any]]) -> None:
    """Every call names an offered tool and its arguments match that tool's schema."""
    assert result.finish_reason == "tool_calls" and result.tool_calls
    schemas = {tool["name"]: tool["parameters"] for tool in tools}
    for call in result.tool_calls:
        assert call.name in schemas, call
        jsonschema.validate(json.loads(call.arguments), schemas[call.name])


async def test_health_lists_local_and_upstream_models(client: InferenceClient) -> None:
    report = await client.health()
    assert report.generation is not None
    assert (report.generation.model, report.generation.backend) == (
        GENERATION_MODEL_ID, "llama_cpp")
    assert {(m.model, m.backend) for m in report.models} == {
        (GENERATION_MODEL_ID, "llama_cpp"), (upstream.POOL_MODEL, "openai_compat")}


async def test_local_model_emits_a_valid_tool_call(client: InferenceClient) -> None:
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "Add 17 and 25 with the add_numbers tool."}]
    result = await client.generate(messages, max_tokens=64, tools=[WEATHER, ADD])
    assert (result.model, result.backend) == (GENERATION_MODEL_ID, "llama_cpp")
    _assert_valid_calls(result, [WEATHER, ADD])
    assert result.text == "" and result.completion_tokens > 0


async def test_upstream_answers_a_plain_prompt(
    client: InferenceClient, upstream_proxy: upstream.FaultProxy
) -> None:
    messages = [{"role": "user", "content": "Name one colour of the sky."}]
    result = await client.generate(messages, max_tokens=16, model=upstream.POOL_MODEL)
    assert (result.model, result.backend) == (upstream.POOL_MODEL, "openai_compat")
    assert result.text.strip() and not result.tool_calls
    assert result.replica.startswith("upstream#")
    sent = upstream_proxy.seen[-1]
    assert sent["authorization"] == f"Bearer {upstream.KEY}"
    assert sent["body"]["model"] == upstream.UPSTREAM_MODEL
    assert sent["body"]["max_tokens"] == 16 and "tools" not in sent["body"]
    # usage is the upstream's: 0 < completion tokens <= max_tokens, a real prompt count
    assert result.prompt_tokens > 5 and 0 < result.completion_tokens <= 16


async def test_upstream_tool_call_goes_through_both_ways(
    client: InferenceClient, upstream_proxy: upstream.FaultProxy
) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Use the get_weather tool to check the weather in Oslo."},
    ]
    result = await client.generate(messages, max_tokens=64, model=upstream.POOL_MODEL,
                                   tools=[WEATHER], tool_choice="auto")
    _assert_valid_calls(result, [WEATHER])
    assert upstream_proxy.seen[-1]["body"]["tools"] == [{"type": "function",
                                                         "function": WEATHER}]
    # The result goes back as a tool message; the upstream reads the whole loop.
    call = result.tool_calls[0]
    loop = [*messages,
            {"role": "assistant", "content": "", "tool_calls": [call.model_dump()]},
            {"role": "tool", "content": "sunny, 21 C", "tool_call_id": call.id}]
    final = await client.generate(loop, max_tokens=24, model=upstream.POOL_MODEL,
                                  tools=[WEATHER], tool_choice="none")
    assert final.finish_reason in ("stop", "length") and final.text.strip()
    assert upstream_proxy.seen[-1]["body"]["messages"][2]["tool_calls"][0]["id"] == call.id


async def test_upstream_429_is_overload_with_its_retry_after(
    client: InferenceClient, upstream_proxy: upstream.FaultProxy
) -> None:
    messages = [{"role": "user", "content": "Say yes."}]
    upstream_proxy.fail_next(429, retry_after="7")
    with pytest.raises(InferenceOverloaded) as overloaded:
        await client.generate(messages, max_tokens=4, model=upstream.POOL_MODEL)
    assert overloaded.value.retry_after == 7.0
    assert "429" in str(overloaded.value.detail)
    upstream_proxy.fail_next(500)
    with pytest.raises(InferenceBackendError):
        await client.generate(messages, max_tokens=4, model=upstream.POOL_MODEL)
    # the failures were the upstream's, not the app's: the next call is served
    result = await client.generate(messages, max_tokens=4, model=upstream.POOL_MODEL)
    assert result.backend == "openai_compat"


async def test_an_unknown_model_is_a_validation_error(client: InferenceClient) -> None:
    with pytest.raises(InferenceValidationError, match="not served here"):
        await client.generate([{"role": "user", "content": "x"}], model="gpt-nine")


async def _register(stack: Settings, script: dict[str, Any]) -> None:
    async with httpx.AsyncClient(base_url=stack.serve_url, timeout=30.0) as http:
        response = await http.post("/script", json=script)
        assert response.status_code == 204, response.text


async def test_scripted_fixture_follows_its_script(
    client: InferenceClient, stack: Settings
) -> None:
    marker = f"[script {uuid.uuid4().hex}]"
    await _register(stack, {"marker": marker, "turns": [
        {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}},
                        {"name": "add_numbers", "arguments": {"a": 1, "b": 2}}],
         "error": {"status": 429, "times": 1, "retry_after_s": 4}},
        {"text": "Sunny, and 3.", "delay_ms": 50, "error": {"status": 500}},
        {"text": "never reached", "error": {"status": 504}},
    ]})
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": f"Weather in Oslo, and 1 + 2? {marker}"},
    ]
    with pytest.raises(InferenceOverloaded) as overloaded:
        await client.generate(messages, tools=[WEATHER, ADD])
    assert overloaded.value.retry_after == 4.0
    first = await client.generate(messages, tools=[WEATHER, ADD])  # the retry is served
    assert (first.model, first.backend) == (SCRIPTED_MODEL_ID, SCRIPTED_MODEL_ID)
    assert first.finish_reason == "tool_calls"
    assert [(c.name, json.loads(c.arguments)) for c in first.tool_calls] == [
        ("get_weather", {"city": "Oslo"}), ("add_numbers", {"a": 1, "b": 2})]
    assert first.prompt_tokens > 0 and first.completion_tokens > 0

    calls: list[ToolCall] = first.tool_calls
    messages += [{"role": "assistant", "content": "",
                  "tool_calls": [c.model_dump() for c in calls]},
                 *({"role": "tool", "content": out, "tool_call_id": c.id}
                   for c, out in zip(calls, ["sunny", "3"], strict=True))]
    with pytest.raises(InferenceBackendError):
        await client.generate(messages)
    second = await client.generate(messages)
    assert (second.text, second.finish_reason, second.tool_calls) == (
        "Sunny, and 3.", "stop", [])
    # The scripted delay (50 ms) was applied; asyncio's timers may fire up to a clock tick
    # early against the run time's clock (measured 49.7 ms once).
    assert second.run_ms >= 45

    messages += [{"role": "assistant", "content": "Sunny, and 3."},
                 {"role": "user", "content": "And tomorrow?"}]
    # A new question starts the script over (the marker is still in the history).
    again = await client.generate(messages)
    assert again.backend == SCRIPTED_MODEL_ID and again.tool_calls == first.tool_calls

    third = [*messages, {"role": "assistant", "content": "x"},
             {"role": "assistant", "content": "y"}]
    with pytest.raises(InferenceTimeout):
        await client.generate(third)


async def test_the_marker_wins_whatever_model_is_named(
    client: InferenceClient, stack: Settings
) -> None:
    marker = f"[script {uuid.uuid4().hex}]"
    await _register(stack, {"marker": marker, "turns": [{"text": "scripted, not served"}]})
    for model in (None, GENERATION_MODEL_ID, upstream.POOL_MODEL):
        result = await client.generate([{"role": "user", "content": f"hi {marker}"}],
                                        model=model)
        assert (result.backend, result.text) == (SCRIPTED_MODEL_ID, "scripted, not served")


async def test_the_direct_routes_reach_the_deployment_the_ingress_picks(
    stack: Settings, upstream_proxy: upstream.FaultProxy
) -> None:
    """A worker's client knows the pools' upstream models and skips the ingress
    (``/model/generate``, ``/upstream/generate``); each request, tools and the scripted
    fixture included, must land where ``/generate`` would have routed it."""
    models = upstream_models(stack.pools)
    assert upstream.POOL_MODEL in models
    marker = f"[script {uuid.uuid4().hex}]"
    await _register(stack, {"marker": marker, "turns": [{"text": "scripted"}]})
    ask = [{"role": "user", "content": "Name one colour of the sky."}]
    async with InferenceClient(stack.serve_url, timeout=180.0,
                               upstream_models=models) as direct, \
            InferenceClient(stack.serve_url, timeout=180.0) as ingress:
        for client in (direct, ingress):
            local = await client.generate(ask, max_tokens=4)
            assert (local.backend, local.replica.split("#")[0]) == ("llama_cpp", "generator")
            remote = await client.generate(ask, max_tokens=8, model=upstream.POOL_MODEL,
                                           tools=[WEATHER], tool_choice="auto")
            assert (remote.backend, remote.replica.split("#")[0]) == (
                "openai_compat", "upstream")
            assert upstream_proxy.seen[-1]["body"]["tools"] == [{"type": "function",
                                                                 "function": WEATHER}]
            scripted = await client.generate([{"role": "user", "content": f"hi {marker}"}],
                                             model=upstream.POOL_MODEL)
            assert (scripted.backend, scripted.text) == (SCRIPTED_MODEL_ID, "scripted")
            assert scripted.replica.startswith("upstream#")
