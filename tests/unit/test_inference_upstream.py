"""The OpenAI-compatible backend's two mappings, without a server: what it sends, and what
each upstream answer becomes (a Generation, or the failure kind that carries the retry
decision). httpx's MockTransport stands in for the network; the real server is in
tests/integration/test_models.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from clawstream.config import PoolSpec, Settings, UpstreamSpec
from clawstream.inference.backends.upstream import OpenAICompatBackend, UpstreamKeyMissing
from clawstream.inference.errors import (
    BackendFailure,
    GenerationTimeout,
    InputRejected,
    Overloaded,
)
from clawstream.inference.protocol import ChatMessage, ToolCall, ToolFunction

KEY = "sk-test-9f8e7d6c5b4a"
SPEC = UpstreamSpec(base_url="http://upstream.test/prefix", model="big-model",
                    api_key_env="TEST_UPSTREAM_KEY")
WEATHER = ToolFunction(
    name="get_weather", description="Weather now.",
    parameters={"type": "object", "properties": {"city": {"type": "string"}},
                "required": ["city"]},
)
LOOP = [
    ChatMessage(role="system", content="Be brief."),
    ChatMessage(role="user", content="Weather in Oslo?"),
    ChatMessage(role="assistant", content="", tool_calls=[
        ToolCall(id="call_1", name="get_weather", arguments='{"city": "Oslo"}')]),
    ChatMessage(role="tool", content="sunny", tool_call_id="call_1"),
]

Handler = Callable[[httpx.Request], httpx.Response]


def _backend(handler: Handler, monkeypatch: pytest.MonkeyPatch) -> OpenAICompatBackend:
    monkeypatch.setenv("TEST_UPSTREAM_KEY", KEY)
    return OpenAICompatBackend("pool-model", SPEC, transport=httpx.MockTransport(handler))


def _completion(message: dict[str, Any], finish: str = "stop",
                usage: dict[str, int] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"id": "x", "object": "chat.completion",
                            "choices": [{"index": 0, "message": message,
                                         "finish_reason": finish}]}
    if usage is not None:
        body["usage"] = usage
    return body


async def test_sends_an_openai_request_with_tools_and_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=_completion(
            {"role": "assistant", "content": "It is sunny."},
            usage={"prompt_tokens": 41, "completion_tokens": 5}))

    backend = _backend(handler, monkeypatch)
    out = await backend.generate(LOOP, 32, 0.2, [WEATHER], "required")
    request = seen[0]
    assert request.url == "http://upstream.test/prefix/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    body = json.loads(request.content)
    assert body["model"] == "big-model"
    assert (body["max_tokens"], body["temperature"], body["stream"]) == (32, 0.2, False)
    assert body["tool_choice"] == "required"
    assert body["tools"] == [{"type": "function", "function": WEATHER.model_dump()}]
    assert body["messages"][2] == {
        "role": "assistant", "content": "",
        "tool_calls": [{"id": "call_1", "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}],
    }
    assert body["messages"][3] == {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}
    assert (out.text, out.finish_reason, out.tool_calls) == ("It is sunny.", "stop", ())
    assert (out.prompt_tokens, out.completion_tokens) == (41, 5)  # the upstream's own usage


async def test_no_tools_means_no_tool_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json=_completion({"content": "hi"}, "length"))

    out = await _backend(handler, monkeypatch).generate(LOOP[:2], 8, 0.0)
    assert "tools" not in bodies[0] and "tool_choice" not in bodies[0]
    assert out.finish_reason == "length"
    assert out.prompt_tokens > 0 and out.completion_tokens > 0  # estimated: no usage sent


@pytest.mark.parametrize(
    ("raw_arguments", "expected"),
    [('{"city": "Oslo"}', '{"city": "Oslo"}'), ({"city": "Oslo"}, '{"city": "Oslo"}'),
     ('{"city": ', '{"city": ')],
)
async def test_tool_calls_come_back(
    monkeypatch: pytest.MonkeyPatch, raw_arguments: object, expected: str
) -> None:
    message = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_a", "type": "function",
         "function": {"name": "get_weather", "arguments": raw_arguments}},
        {"type": "function", "function": {"name": "get_weather", "arguments": "{}"}},
    ]}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=_completion(message, "tool_calls"))

    out = await _backend(handler, monkeypatch).generate(LOOP[:2], 32, 0.0, [WEATHER])
    assert out.finish_reason == "tool_calls" and out.text == ""
    assert out.tool_calls == (
        ToolCall(id="call_a", name="get_weather", arguments=expected),
        ToolCall(id="call_1", name="get_weather", arguments="{}"),  # id filled in
    )


def _answer(status: int, headers: dict[str, str] | None = None,
            body: object = None) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers=headers,
                              json=body if body is not None else {"error": {"message": "nope"}})
    return handler


@pytest.mark.parametrize(
    ("handler", "kind", "retry_after"),
    [
        (_answer(429, {"Retry-After": "7"}), Overloaded, 7.0),
        (_answer(503, {"Retry-After": "2"}), Overloaded, 2.0),
        (_answer(429), Overloaded, None),
        (_answer(400), InputRejected, None),
        (_answer(413), InputRejected, None),
        (_answer(422), InputRejected, None),
        (_answer(408), GenerationTimeout, None),
        (_answer(504), GenerationTimeout, None),
        (_answer(500), BackendFailure, None),
        (_answer(502), BackendFailure, None),
        (_answer(401), BackendFailure, None),
        (_answer(404), BackendFailure, None),
        (_answer(200, body={"no": "choices"}), BackendFailure, None),
        (_answer(200, body=_completion({"tool_calls": [
            {"function": {"name": "not an identifier", "arguments": "{}"}}]})),
         BackendFailure, None),
    ],
)
async def test_upstream_answers_map_to_failure_kinds(
    monkeypatch: pytest.MonkeyPatch, handler: Handler, kind: type[Exception],
    retry_after: float | None,
) -> None:
    with pytest.raises(kind) as failure:
        await _backend(handler, monkeypatch).generate(LOOP[:2], 8, 0.0)
    assert "pool-model" in str(failure.value) or kind is BackendFailure
    assert KEY not in str(failure.value)
    if kind is Overloaded:
        assert isinstance(failure.value, Overloaded)
        assert failure.value.retry_after_s == retry_after


async def test_400_detail_is_the_upstreams_message(monkeypatch: pytest.MonkeyPatch) -> None:
    handler = _answer(400, body={"error": {"message": "context length exceeded"}})
    with pytest.raises(InputRejected, match="HTTP 400: context length exceeded"):
        await _backend(handler, monkeypatch).generate(LOOP[:2], 8, 0.0)


@pytest.mark.parametrize(
    ("error", "kind"),
    [(httpx.ReadTimeout("slow"), GenerationTimeout),
     (httpx.ConnectTimeout("slow"), GenerationTimeout),
     (httpx.ConnectError("refused"), BackendFailure),
     (httpx.RemoteProtocolError("closed"), BackendFailure)],
)
async def test_transport_failures(
    monkeypatch: pytest.MonkeyPatch, error: Exception, kind: type[Exception]
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    with pytest.raises(kind) as failure:
        await _backend(handler, monkeypatch).generate(LOOP[:2], 8, 0.0)
    assert KEY not in str(failure.value)


def test_the_key_stays_out_of_repr_and_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = _backend(_answer(200), monkeypatch)
    assert KEY not in repr(backend)
    settings = Settings(pools={"remote": PoolSpec(capacity_tokens_per_s=100, upstream=SPEC)})
    assert KEY not in settings.model_dump_json()
    assert settings.pools["remote"].backend_model == "big-model"  # defaults to upstream name


def test_a_missing_key_is_said_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_UPSTREAM_KEY", raising=False)
    with pytest.raises(UpstreamKeyMissing, match="TEST_UPSTREAM_KEY"):
        OpenAICompatBackend("pool-model", SPEC)


def test_one_model_id_cannot_name_two_upstreams() -> None:
    other = SPEC.model_copy(update={"base_url": "http://elsewhere"})
    with pytest.raises(ValueError, match="already served by another upstream"):
        Settings(pools={"a": PoolSpec(capacity_tokens_per_s=1, upstream=SPEC),
                        "b": PoolSpec(capacity_tokens_per_s=1, upstream=other)})
    same = Settings(pools={"a": PoolSpec(capacity_tokens_per_s=1, upstream=SPEC),
                           "b": PoolSpec(capacity_tokens_per_s=1, upstream=SPEC)})
    assert {"a", "b"} <= set(same.pools)  # (settings merge the env's pools in too)


def _sse(*chunks: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + \
        b"data: [DONE]\n\n"


async def test_a_stream_is_read_piece_by_piece_and_put_back_together(
        monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=_sse(
            {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
            {"choices": [{"index": 0, "delta": {"content": "Let me "}}]},
            {"choices": [{"index": 0, "delta": {"content": "check."}}]},
            {"choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "id": "call_9", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"ci'}}]}}]},
            {"choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "function": {"arguments": 'ty": "Oslo"}'}}]}}]},
            {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
            {"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 7}}))

    backend = _backend(handler, monkeypatch)
    items = [item async for item in backend.stream(LOOP[:2], 32, 0.0, [WEATHER])]
    *pieces, whole = items
    assert pieces == ["Let me ", "check."]
    assert sent[0]["stream"] is True and sent[0]["stream_options"] == {"include_usage": True}
    assert (whole.text, whole.finish_reason, whole.prompt_tokens, whole.completion_tokens) == (
        "Let me check.", "tool_calls", 11, 7)
    assert whole.tool_calls == (ToolCall(id="call_9", name="get_weather",
                                         arguments='{"city": "Oslo"}'),)


async def test_a_stream_refused_or_garbled_is_its_failure_kind(
        monkeypatch: pytest.MonkeyPatch) -> None:
    refused = _backend(lambda r: httpx.Response(429, headers={"retry-after": "3"}, json={}),
                       monkeypatch)
    with pytest.raises(Overloaded):
        [item async for item in refused.stream(LOOP[:2], 8, 0.0)]
    garbled = _backend(lambda r: httpx.Response(200, content=b"data: {not json\n\n"),
                       monkeypatch)
    with pytest.raises(BackendFailure, match="not a chat completion chunk"):
        [item async for item in garbled.stream(LOOP[:2], 8, 0.0)]
