"""The gateway's rules that need no stack: field paths, answers as HTTP errors, request
limits, chunking, client-settable options, key format."""

from __future__ import annotations

import asyncio
from typing import Any, get_args

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from clawstream.gateway import errors
from clawstream.gateway.apikeys import PREFIX, check_tenant, hash_key, new_key
from clawstream.gateway.limits import RequestLimits
from clawstream.gateway.models import (
    OPTION_NAMES,
    ChatCompletionBody,
    OptionName,
    RequestBody,
    last_user_text,
    question_text,
    record_messages,
    record_tools,
)
from clawstream.gateway.service import answer_error
from clawstream.inference.backends.base import split_text
from clawstream.processors.keys import client_conversation_id, tenant_conversation_id


def test_param_names_the_field_as_a_client_writes_it() -> None:
    assert errors.param_of(("body", "messages", 0, "role")) == "messages[0].role"
    assert errors.param_of(("body",)) is None
    assert errors.param_of(("header", "Idempotency-Key")) == "Idempotency-Key"


def _answer(status: str, kind: str | None = None, retry: float | None = None) -> dict[str, Any]:
    return {"status": status, "reason": "why", "reason_kind": kind, "retry_after_s": retry,
            "text": ""}


def test_answers_map_to_the_errors_openai_clients_expect() -> None:
    assert answer_error(_answer("ok"), "r") is None
    assert answer_error(_answer("degraded"), "r") is None
    limited = answer_error(_answer("rejected", "tenant_rate_limit", 1.2), "r")
    assert limited is not None and limited.status == 429
    assert limited.code == "rate_limit_exceeded"
    assert limited.headers == {"Retry-After": "2", "retry-after-ms": "1200"}
    budget = answer_error(_answer("rejected", "conversation_budget", 0.0), "r")
    assert budget is not None and budget.code == "insufficient_quota"
    assert "Retry-After" not in budget.headers
    unknown = answer_error(_answer("rejected", "unknown_agent"), "r")
    assert unknown is not None and unknown.status == 404
    late = answer_error(_answer("failed", "deadline"), "r1")
    assert late is not None and late.status == 504 and late.body()["error"]["request_id"] == "r1"
    failed = answer_error(_answer("failed"), "r")
    assert failed is not None and failed.status == 502


def test_request_body_needs_exactly_one_question_and_only_client_options() -> None:
    with pytest.raises(ValidationError):
        RequestBody.model_validate({"agent": "chat"})
    with pytest.raises(ValidationError):
        RequestBody.model_validate({"agent": "chat", "text": "a",
                                    "messages": [{"role": "user", "content": "b"}]})
    with pytest.raises(ValidationError):  # the runtime's own options never come from outside
        RequestBody.model_validate({"agent": "chat", "text": "a", "options": {"run": "1"}})
    assert set(get_args(OptionName)) == set(OPTION_NAMES)


def test_chat_body_accepts_unknown_openai_fields_and_reads_the_last_user_message() -> None:
    body = ChatCompletionBody.model_validate({
        "model": "agent/chat", "frequency_penalty": 0.5, "logit_bias": {"1": 2},
        "messages": [{"role": "user", "content": "first"},
                     {"role": "assistant", "content": "reply"},
                     {"role": "user", "content": [{"type": "text", "text": "sec"},
                                                  {"type": "text", "text": "ond"}]}]})
    assert last_user_text(body.messages) == ("second", 2)
    with pytest.raises(ValidationError):
        ChatCompletionBody.model_validate({"model": "m", "n": 2,
                                           "messages": [{"role": "user", "content": "x"}]})


def test_a_governed_calls_chat_and_tools_become_the_request_events_fields() -> None:
    body = ChatCompletionBody.model_validate({
        "model": "small",
        "tools": [{"type": "function", "function": {
            "name": "get_weather", "parameters": {"type": "object", "properties": {}}}}],
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": None, "tool_calls": [{
                "id": "c1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "3 C"}]})
    messages = record_messages(body.messages)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool"]
    assert messages[2]["tool_calls"] == [{"id": "c1", "name": "get_weather",
                                          "arguments_json": '{"city":"Oslo"}'}]
    assert messages[3]["tool_call_id"] == "c1" and messages[3]["content"] == "3 C"
    assert record_tools(body.tools) == [{"name": "get_weather", "description": "",
                                         "parameters_json": '{"type":"object","properties":{}}'}]
    assert question_text(body.messages) == "Weather?"
    for bad in ([{"role": "tool", "content": "no id"}],
                [{"role": "user", "content": "x", "tool_calls": [
                    {"id": "c", "function": {"name": "f"}}]}]):
        with pytest.raises(ValidationError):
            ChatCompletionBody.model_validate({"model": "small", "messages": bad})
    twice = {"type": "function", "function": {"name": "f"}}
    with pytest.raises(ValidationError, match="each tool name once"):
        ChatCompletionBody.model_validate({"model": "small", "tools": [twice, twice],
                                           "messages": [{"role": "user", "content": "x"}]})


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=300))
def test_pieces_put_the_text_back_together(text: str) -> None:
    assert "".join(split_text(text)) == text


def test_conversations_are_scoped_by_tenant() -> None:
    scoped = tenant_conversation_id("acme", "c1")
    assert scoped != tenant_conversation_id("other", "c1")
    assert client_conversation_id("acme", scoped) == "c1"


def test_keys_are_random_and_stored_by_hash_only() -> None:
    key_id, key = new_key()
    assert key.startswith(f"{PREFIX}{key_id}_") and len(key) > 40
    assert new_key()[1] != key
    assert len(hash_key(key)) == 64 and key not in hash_key(key)
    assert check_tenant("acme-1") == "acme-1"
    with pytest.raises(ValueError):
        check_tenant("Acme/../x")


def _limited_app(max_bytes: int, timeout_s: float) -> TestClient:
    app = FastAPI()
    errors.install(app)

    @app.post("/echo")
    async def echo(body: dict[str, Any]) -> dict[str, Any]:
        return body

    app.add_middleware(RequestLimits, max_body_bytes=max_bytes, body_timeout_s=timeout_s)
    return TestClient(app)


def test_oversized_bodies_are_413_by_header_and_by_stream() -> None:
    client = _limited_app(100, 5.0)
    assert client.post("/echo", json={"a": 1}).status_code == 200
    assert client.post("/echo", json={"a": "x" * 200}).status_code == 413

    def chunks() -> Any:  # no Content-Length: counted as it streams in
        yield b'{"a": "'
        yield b"x" * 200
        yield b'"}'

    streamed = client.post("/echo", content=chunks(), headers={"content-type":
                                                               "application/json"})
    assert streamed.status_code == 413
    assert streamed.json()["error"]["code"] == "request_too_large"


def test_a_body_that_does_not_arrive_in_time_is_408() -> None:
    async def run() -> int:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            await asyncio.sleep(10)
            return {"type": "http.request", "body": b""}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        async def app(scope: Any, rcv: Any, snd: Any) -> None:
            await rcv()

        scope = {"type": "http", "headers": []}
        await RequestLimits(app, 100, 0.05)(scope, receive, send)
        return int(sent[0]["status"])

    assert asyncio.run(run()) == 408


def test_after_the_body_a_long_response_is_not_cut_by_the_body_timeout() -> None:
    """A streaming response listens for the client's disconnect from its start (Starlette
    with ASGI spec 2.3, which uvicorn's h11 serves); that wait is not the body's."""
    async def run() -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []
        messages = [{"type": "http.request", "body": b"{}", "more_body": False}]

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop()
            await asyncio.sleep(3600)  # the client stays connected
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        async def app(scope: Any, rcv: Any, snd: Any) -> None:
            await rcv()
            listening = asyncio.ensure_future(rcv())  # before the response starts
            await asyncio.sleep(0.2)  # four body timeouts
            assert not listening.done()
            listening.cancel()
            await snd({"type": "http.response.start", "status": 200, "headers": []})
            await snd({"type": "http.response.body", "body": b"ok"})

        await RequestLimits(app, 100, 0.05)({"type": "http", "headers": []}, receive, send)
        return sent

    assert [m.get("status") for m in asyncio.run(run())] == [200, None]


def test_the_index_hands_each_watch_its_requests_records_and_forgets_closed_ones() -> None:
    from clawstream.gateway.index import AnswerIndex
    from clawstream.schemas import encode
    from clawstream.schemas.names import AGENT_EVENT

    def event(request_id: str, kind: str) -> bytes:
        return encode(AGENT_EVENT, {"event_id": kind, "event_type": kind, "at_ms": 1,
                                    "request_id": request_id, "conversation_id": "t/c"})

    async def run() -> None:
        index = AnswerIndex("127.0.0.1:1")  # never started: records are fed by hand
        index._loop = asyncio.get_running_loop()
        watch = index.watch("r1", "t/c")
        index._on_message("agent.events", b"t/other", event("r1", "elsewhere"))
        index._on_message("agent.events", b"t/c", event("r2", "not-mine"))
        index._on_message("agent.events", b"t/c", event("r1", "mine"))
        index.follow(watch, "r0")  # a duplicate: the first request answers for it
        index._on_message("agent.events", b"t/c", event("r0", "first"))
        await asyncio.sleep(0)
        got = [watch.queue.get_nowait()[1]["event_type"] for _ in range(watch.queue.qsize())]
        assert got == ["mine", "first"]
        assert index.waiting == 1
        index.close(watch)
        index.close(watch)
        assert index.waiting == 0 and not index._keys
        late = index.watch("r2", "t/c")  # opened after its record went by: still gets it
        assert [late.queue.get_nowait()[1]["event_type"]] == ["not-mine"]
        index.close(late)
        index.stop()

    asyncio.run(run())
