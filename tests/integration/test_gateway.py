"""The HTTP gateway on the real stack (Kafka, Redis, Ray Serve + model, a Faust worker),
driven by the official ``openai`` client, unchanged, and by plain HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import redis.asyncio as aioredis

from clawstream.config import Settings
from clawstream.deploy.local import gateway as gateway_proc
from clawstream.deploy.local import redis as redis_local
from clawstream.deploy.local.env import child_env
from clawstream.deploy.local.ports import free_port
from clawstream.deploy.local.wait import wait_for
from clawstream.gateway.apikeys import KeyStore
from clawstream.processors.flow.flags import set_flag
from clawstream.processors.keys import tenant_conversation_id
from clawstream.schemas.names import AGENT_REQUEST
from clawstream.streams.subscriber import read_topic
from clawstream.streams.topics import REQUESTS_INTERACTIVE

pytestmark = pytest.mark.integration


def make_key(settings: Settings, tenant: str) -> str:
    async def create() -> str:
        client = aioredis.Redis.from_url(settings.redis_url)
        try:
            return (await KeyStore(client).create(tenant, "test"))[1]
        finally:
            await client.aclose()

    return asyncio.run(create())


@pytest.fixture(scope="module")
def tenant_a(gateway: Settings) -> tuple[str, str]:
    tenant = f"ta-{uuid.uuid4().hex[:6]}"
    return tenant, make_key(gateway, tenant)


@pytest.fixture(scope="module")
def tenant_b(gateway: Settings) -> tuple[str, str]:
    tenant = f"tb-{uuid.uuid4().hex[:6]}"
    return tenant, make_key(gateway, tenant)


def client(settings: Settings, key: str, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{settings.gateway_url}/v1", api_key=key, **kwargs)


def http(settings: Settings, key: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=settings.gateway_url, headers=headers, timeout=180)


def ask(settings: Settings, key: str, text: str = "Say hello.", **body: Any) -> dict[str, Any]:
    with http(settings, key) as h:
        created = h.post("/v1/requests", json={"agent": "chat", "text": text, **body})
        assert created.status_code == 202, created.text
        return dict(created.json())


def script(settings: Settings, marker: str, *turns: dict[str, Any]) -> None:
    """Register a scripted model answer (the fixture answers any request carrying
    ``marker``, inference/scripted.py)."""
    response = httpx.post(f"{settings.serve_url}/script",
                          json={"marker": marker, "turns": list(turns)}, timeout=10)
    assert response.status_code == 204, response.text


def reassemble(chunks: list[Any]) -> list[Any]:
    """The tool calls a client builds from streamed deltas: per ``index``, the first part's
    id, type and name, and the arguments of every part joined (as OpenAI streams them)."""
    calls: dict[int, Any] = {}
    for chunk in chunks:
        for part in (chunk.choices[0].delta.tool_calls or ()) if chunk.choices else ():
            if part.index not in calls:
                calls[part.index] = part.model_copy(deep=True)
            else:
                calls[part.index].function.arguments += part.function.arguments or ""
    return [calls[i] for i in sorted(calls)]


def fetch(settings: Settings, key: str, request_id: str, wait: float = 120) -> httpx.Response:
    with http(settings, key) as h:
        return h.get(f"/v1/requests/{request_id}", params={"wait": wait})


def test_openai_client_gets_an_agent_answer(gateway: Settings, tenant_a: tuple[str, str]
                                            ) -> None:
    reply = client(gateway, tenant_a[1]).chat.completions.with_raw_response.create(
        model="agent/chat", messages=[{"role": "system", "content": "ignored today"},
                                      {"role": "user", "content": "Say hello."}])
    completion = reply.parse()
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    request_id = reply.headers["x-request-id"]
    assert completion.id == f"chatcmpl-{request_id}"
    stored = fetch(gateway, tenant_a[1], request_id).json()
    assert stored["status"] == "ok"
    assert stored["answer"]["text"] == completion.choices[0].message.content


def test_streaming_sends_chunks_before_the_answer_and_usage_last(
        gateway: Settings, tenant_a: tuple[str, str]) -> None:
    raw = client(gateway, tenant_a[1]).chat.completions.with_raw_response.create(
        model="agent/researcher", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Where are the caches?"}])
    arrivals: list[tuple[float, Any]] = []
    for chunk in raw.parse():
        arrivals.append((time.time(), chunk))
    request_id = raw.headers["x-request-id"]
    answer = fetch(gateway, tenant_a[1], request_id).json()["answer"]
    first_at, first = arrivals[0]
    assert first.object == "chat.completion.chunk"
    assert first.choices[0].delta.role == "assistant"
    assert first_at * 1000 < answer["answered_at_ms"], "the first chunk waited for the answer"
    text = "".join(c.choices[0].delta.content or "" for _, c in arrivals if c.choices)
    assert text == answer["text"]
    finish = [c.choices[0].finish_reason for _, c in arrivals if c.choices]
    assert finish[-1] == "stop" and set(finish[:-1]) == {None}
    last = arrivals[-1][1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == answer["usage"]["completion_tokens"] > 0
    assert all(c.usage is None for _, c in arrivals[:-1])


def test_models_and_unknown_model(gateway: Settings, tenant_a: tuple[str, str]) -> None:
    oai = client(gateway, tenant_a[1], max_retries=0)
    ids = {m.id for m in oai.models.list()}
    assert {"agent/chat", "agent/researcher"} <= ids
    with pytest.raises(openai.NotFoundError) as err:
        oai.chat.completions.create(model="agent/nobody",
                                    messages=[{"role": "user", "content": "hi"}])
    assert err.value.code == "model_not_found"


WEATHER_TOOL: Any = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


def test_models_lists_agents_and_pools(gateway: Settings, tenant_a: tuple[str, str]) -> None:
    ids = {m.id for m in client(gateway, tenant_a[1]).models.list()}
    assert set(gateway.pools) <= ids and "agent/model/small" not in ids


@pytest.mark.parametrize("stream", [False, True])
def test_a_governed_model_call_returns_the_tool_call_then_the_final_text(
        gateway: Settings, tenant_a: tuple[str, str], stream: bool) -> None:
    """OpenClaw's loop against a provider: tools offered, a tool call back (unchanged, not
    run here), the client runs it and sends the result, the model's final text back."""
    marker = f"weather-{uuid.uuid4().hex}"
    call_id = f"call_{uuid.uuid4().hex[:12]}"
    script(gateway, marker,
           {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"},
                            "id": call_id}]},
           {"text": "It is 3 degrees in Oslo."})
    oai = client(gateway, tenant_a[1], max_retries=0)
    pool = sorted(gateway.pools)[0]
    messages: list[Any] = [{"role": "system", "content": "You are a weather bot."},
                           {"role": "user", "content": f"Weather in Oslo? {marker}"}]

    def complete() -> tuple[str | None, list[Any], str]:
        if not stream:
            reply = oai.chat.completions.create(model=pool, messages=messages,
                                                tools=[WEATHER_TOOL])
            choice = reply.choices[0]
            return (choice.message.content, list(choice.message.tool_calls or []),
                    choice.finish_reason)
        chunks = list(oai.chat.completions.create(model=pool, messages=messages,
                                                  tools=[WEATHER_TOOL], stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        calls = reassemble(chunks)
        finish = [c.choices[0].finish_reason for c in chunks
                  if c.choices and c.choices[0].finish_reason]
        return text or None, calls, finish[-1]

    content, calls, finish = complete()
    assert finish == "tool_calls" and not content
    assert [(c.id, c.type, c.function.name, json.loads(c.function.arguments))
            for c in calls] == [(call_id, "function", "get_weather", {"city": "Oslo"})]
    messages += [{"role": "assistant", "content": None, "tool_calls": [
                     {"id": call_id, "type": "function", "function": {
                         "name": "get_weather", "arguments": calls[0].function.arguments}}]},
                 {"role": "tool", "tool_call_id": call_id, "content": "3 C, cloudy"}]
    content, calls, finish = complete()
    assert (content, calls, finish) == ("It is 3 degrees in Oslo.", [], "stop")


def test_a_governed_model_call_is_one_model_step_on_the_pool(
        gateway: Settings, tenant_a: tuple[str, str]) -> None:
    pool = next(p for p in sorted(gateway.pools) if p != gateway.task_pools["chat"])
    reply = client(gateway, tenant_a[1]).chat.completions.with_raw_response.create(
        model=pool, messages=[{"role": "user", "content": "Say hello."}])
    assert reply.parse().choices[0].message.content
    stored = fetch(gateway, tenant_a[1], reply.headers["x-request-id"]).json()
    assert [e["step_type"] for e in stored["answer"]["timeline"]] == ["model"]
    with http(gateway, tenant_a[1]) as h, h.stream(
            "GET", stored["links"]["events"]) as stream:
        issued = [json.loads(line.removeprefix("data: ")) for line in stream.iter_lines()
                  if line.startswith("data: ") and '"step_issued"' in line]
    assert [e["detail"]["pool"] for e in issued] == [pool]


def test_keys_are_required_and_scoped(gateway: Settings, tenant_a: tuple[str, str],
                                      tenant_b: tuple[str, str]) -> None:
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.AuthenticationError) as wrong:
        client(gateway, "csk_0_nope", max_retries=0).chat.completions.create(
            model="agent/chat", messages=messages)
    assert wrong.value.status_code == 401 and wrong.value.code == "invalid_api_key"
    with pytest.raises(openai.PermissionDeniedError):
        client(gateway, tenant_a[1], max_retries=0,
               default_headers={"X-Clawstream-Tenant": tenant_b[0]}).models.list()
    with http(gateway, None) as h:  # the openai client refuses to send no key at all
        missing = h.post("/v1/chat/completions", json={"model": "agent/chat",
                                                       "messages": messages})
        assert missing.status_code == 401
        assert missing.json()["error"]["code"] == "missing_api_key"
        assert h.get("/v1/requests/whatever").status_code == 401


def test_a_rate_limited_tenant_gets_429_with_retry_after(gateway: Settings) -> None:
    tenant = f"tl-{uuid.uuid4().hex[:6]}"
    oai = client(gateway, make_key(gateway, tenant), max_retries=0)
    set_flag(gateway.bootstrap_servers, f"limit.tenant.{tenant}", "0.01/1", by="test")
    deadline = time.monotonic() + 30
    while True:  # flags reach the worker within 2 s; until then requests pass
        assert time.monotonic() < deadline, "the tenant limit never applied"
        try:
            oai.chat.completions.create(model="agent/chat",
                                        messages=[{"role": "user", "content": "hi"}])
        except openai.RateLimitError as exc:
            rejected = exc
            break
    assert rejected.status_code == 429 and rejected.code == "rate_limit_exceeded"
    assert int(rejected.response.headers["retry-after"]) >= 1
    assert float(rejected.response.headers["retry-after-ms"]) > 0
    body = rejected.response.json()["error"]
    assert body["type"] == "requests" and tenant in body["message"]


def test_idempotency_key_twice_is_one_request_and_one_answer(
        gateway: Settings, tenant_a: tuple[str, str]) -> None:
    key = f"idem-{uuid.uuid4().hex}"
    conversation = f"idem-{uuid.uuid4().hex[:8]}"
    body = {"agent": "chat", "text": "Say hello.", "conversation": conversation}
    with http(gateway, tenant_a[1]) as h:
        first = h.post("/v1/requests", json=body, headers={"Idempotency-Key": key})
        second = h.post("/v1/requests", json=body, headers={"Idempotency-Key": key})
        assert first.status_code == second.status_code == 202
        assert first.json()["id"] == second.json()["id"]
        assert second.headers["idempotent-replayed"] == "true"
        other = h.post("/v1/requests", json={**body, "text": "Something else."},
                       headers={"Idempotency-Key": key})
        assert other.status_code == 422 and other.json()["error"]["param"] == "Idempotency-Key"
    request_id = first.json()["id"]
    answer = fetch(gateway, tenant_a[1], request_id).json()["answer"]
    again = fetch(gateway, tenant_a[1], request_id, wait=0).json()["answer"]
    assert answer is not None and answer == again
    oai = client(gateway, tenant_a[1])
    chat_key = {"Idempotency-Key": f"chat-{uuid.uuid4().hex}"}
    one = oai.chat.completions.create(model="agent/chat", extra_headers=chat_key,
                                      messages=[{"role": "user", "content": "Say hi."}])
    two = oai.chat.completions.create(model="agent/chat", extra_headers=chat_key,
                                      messages=[{"role": "user", "content": "Say hi."}])
    assert one.id == two.id and one.choices[0].message.content == \
        two.choices[0].message.content
    published = [r for _, r in read_topic(
        gateway.bootstrap_servers, REQUESTS_INTERACTIVE.name, timeout_s=3,
        until=None) if r.get("conversation_id") == tenant_conversation_id(
            tenant_a[0], conversation)]
    assert len(published) == 1


def test_a_tenant_cannot_read_another_tenants_requests(
        gateway: Settings, tenant_a: tuple[str, str], tenant_b: tuple[str, str]) -> None:
    conversation = f"shared-name-{uuid.uuid4().hex[:6]}"
    mine = ask(gateway, tenant_a[1], conversation=conversation)
    with http(gateway, tenant_b[1]) as h:  # A's conversation is not there for B
        assert h.get(f"/v1/conversations/{conversation}").status_code == 404
    theirs = ask(gateway, tenant_b[1], conversation=conversation)
    with http(gateway, tenant_b[1]) as h:
        assert h.get(f"/v1/requests/{mine['id']}").status_code == 404
        assert h.get(f"/v1/requests/{mine['id']}/events").status_code == 404
        listed = h.get(f"/v1/conversations/{conversation}").json()
    assert [r["id"] for r in listed["requests"]] == [theirs["id"]]
    with http(gateway, tenant_a[1]) as h:
        assert [r["id"] for r in h.get(f"/v1/conversations/{conversation}").json()
                ["requests"]] == [mine["id"]]
    assert fetch(gateway, tenant_a[1], mine["id"]).json()["status"] == "ok"


def test_event_stream_follows_the_timeline_to_the_answer(
        gateway: Settings, tenant_a: tuple[str, str]) -> None:
    created = ask(gateway, tenant_a[1], text="Where are the caches?", agent="researcher")
    events: list[tuple[str, dict[str, Any]]] = []
    with http(gateway, tenant_a[1]) as h, h.stream(
            "GET", created["links"]["events"]) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        kind = ""
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((kind, json.loads(line.removeprefix("data: "))))
    kinds = [k for k, _ in events]
    assert kinds[0] == "request_received" and kinds[-1] == "answer"
    assert kinds.count("step_issued") == 2 and kinds.count("step_completed") == 2
    assert events[-1][1]["status"] == "ok"


def test_deadline_is_504_with_the_request_id_and_the_request_can_be_fetched(
        gateway: Settings, tenant_a: tuple[str, str]) -> None:
    oai = client(gateway, tenant_a[1], max_retries=0)
    with pytest.raises(openai.APIStatusError) as err:
        oai.chat.completions.create(model="agent/chat", extra_headers={
            "X-Clawstream-Deadline-S": "0.001"}, messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 504
    request_id = err.value.response.json()["error"]["request_id"]
    stored = fetch(gateway, tenant_a[1], request_id).json()
    assert stored["status"] == "failed" and stored["answer"]["reason_kind"] == "deadline"


def test_bad_input_is_400_naming_the_field(gateway: Settings, tenant_a: tuple[str, str]
                                           ) -> None:
    with http(gateway, tenant_a[1]) as h:
        bad_role = h.post("/v1/chat/completions", json={
            "model": "agent/chat", "messages": [{"role": "robot", "content": "hi"}]})
        assert bad_role.status_code == 400
        assert bad_role.json()["error"]["param"] == "messages[0].role"
        not_json = h.post("/v1/chat/completions", content=b"{not json",
                          headers={"content-type": "application/json"})
        assert not_json.status_code == 400
        assert not_json.json()["error"]["code"] == "invalid_json"
        no_messages = h.post("/v1/chat/completions", json={"model": "agent/chat"})
        assert no_messages.status_code == 400
        assert no_messages.json()["error"] == {
            "message": "messages: Field required", "type": "invalid_request_error",
            "param": "messages", "code": "invalid_value"}
        no_model = h.post("/v1/chat/completions", json={
            "model": "gpt-nothing", "messages": [{"role": "user", "content": "hi"}]})
        assert no_model.status_code == 404
        assert no_model.json()["error"]["code"] == "model_not_found"
        bad_tool = h.post("/v1/chat/completions", json={
            "model": sorted(gateway.pools)[0], "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "x", "parameters": {
                "type": "string"}}}]})
        assert bad_tool.status_code == 400
        assert bad_tool.json()["error"]["param"].startswith("tools[0].function.parameters")
        options = h.post("/v1/requests", json={"agent": "chat", "text": "hi",
                                               "options": {"redrive_of": "x"}})
        assert options.status_code == 400 and options.json()["error"]["param"].startswith(
            "options")
        huge = h.post("/v1/requests", json={"agent": "chat",
                                            "text": "x" * (gateway.gateway_max_body_bytes)})
        assert huge.status_code == 413


@pytest.fixture
def tight_gateway(gateway: Settings) -> Iterator[str]:
    """A second gateway process on another port that waits on at most one request."""
    settings = gateway.model_copy(update={"gateway_port": free_port(),
                                          "gateway_max_inflight": 1})
    proc = subprocess.Popen(gateway_proc.command(), env=child_env(settings, role="gateway"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: gateway_proc.is_ready(settings), timeout=60,
                        abort=lambda: None if proc.poll() is None else "exited") is None
        yield settings.gateway_url
    finally:
        proc.terminate()
        proc.wait(30)


def test_a_full_gateway_answers_503_overloaded(gateway: Settings, tight_gateway: str,
                                               tenant_a: tuple[str, str]) -> None:
    held, other = f"hold-{uuid.uuid4().hex}", f"next-{uuid.uuid4().hex}"
    script(gateway, held, {"text": "held long enough", "delay_ms": 20_000})
    script(gateway, other, {"text": "now there is room"})
    oai = openai.OpenAI(base_url=f"{tight_gateway}/v1", api_key=tenant_a[1], max_retries=0)
    holder = oai.chat.completions.create(
        model="agent/chat", stream=True, messages=[{"role": "user", "content": held}])
    # The role chunk comes once the coordinator took the request: from then on the gateway
    # holds its one waiter until the (scripted, slow) answer or the client leaves.
    assert next(iter(holder)).choices[0].delta.role == "assistant"
    with pytest.raises(openai.APIStatusError) as full:
        oai.chat.completions.create(model="agent/chat",
                                    messages=[{"role": "user", "content": other}])
    assert full.value.status_code == 503 and full.value.code == "overloaded"
    assert int(full.value.response.headers["retry-after"]) >= 1
    holder.close()  # the client leaves: its waiter is released
    assert wait_for(lambda: httpx.get(f"{tight_gateway}/ready").json()["waiting"] == 0,
                    timeout=30) is None
    reply = oai.chat.completions.create(model="agent/chat",
                                        messages=[{"role": "user", "content": other}])
    assert reply.choices[0].message.content == "now there is room"


def test_fuzzed_http_surface_never_fails_with_500(gateway: Settings,
                                                  tenant_a: tuple[str, str]) -> None:
    from tests.integration.gateway_fuzz import fuzz

    failures = fuzz(gateway.gateway_url, tenant_a[1])
    assert not failures, failures[:5]
    assert gateway_proc.is_ready(gateway)


def test_gateway_sigkill_mid_stream_loses_no_request(gateway: Settings,
                                                     tenant_a: tuple[str, str]) -> None:
    raw = client(gateway, tenant_a[1], max_retries=0).chat.completions.with_raw_response \
        .create(model="agent/researcher", stream=True,
                messages=[{"role": "user",
                           "content": f"How are retries scheduled? ({uuid.uuid4().hex})"}])
    request_id = raw.headers["x-request-id"]
    stream = iter(raw.parse())
    assert next(stream).choices[0].delta.role == "assistant"
    assert gateway_proc.kill(gateway)
    rest: list[Any] = []
    with contextlib.suppress(Exception):  # the body broke off: the client's transport error
        rest.extend(stream)
    assert not any(c.choices and c.choices[0].finish_reason for c in rest)
    gateway_proc.start(gateway)
    stored = fetch(gateway, tenant_a[1], request_id).json()
    assert stored["status"] == "ok" and stored["answer"]["text"]
    published = [r for name, r in read_topic(gateway.bootstrap_servers,
                                             REQUESTS_INTERACTIVE.name, timeout_s=3)
                 if name == AGENT_REQUEST and r["request_id"] == request_id]
    assert len(published) == 1


def test_a_redis_restart_does_not_refuse_the_next_request(gateway: Settings) -> None:
    """The gateway's pooled Redis connections die with Redis; the first request after a
    restart must still be served (a fresh key: its check reads Redis, not the key cache)."""
    ask(gateway, make_key(gateway, f"tr-{uuid.uuid4().hex[:6]}"))  # the pool is in use
    assert redis_local.stop(gateway)
    redis_local.start(gateway)
    ask(gateway, make_key(gateway, f"tr-{uuid.uuid4().hex[:6]}"))
