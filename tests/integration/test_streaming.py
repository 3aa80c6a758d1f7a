"""Token-by-token streaming through the real gateway, worker, Kafka and model, read by
independent clients: the official ``openai`` package and a spec SSE parser (httpx-sse).

"Before the answer" is judged against the answer record's own time (``answered_at_ms``,
stamped by the coordinator when it writes the answer to ``agent.answers``): a chunk that
arrived earlier cannot have been cut from the answer."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from httpx_sse import connect_sse

from clawstream.config import Settings
from tests.integration.test_gateway import (
    WEATHER_TOOL,
    client,
    fetch,
    http,
    make_key,
    reassemble,
    script,
)
from tests.integration.upstream import FaultProxy

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def key(gateway: Settings) -> str:
    return make_key(gateway, f"ts-{uuid.uuid4().hex[:6]}")


def local_pool(settings: Settings) -> str:
    """A pool the local model serves (the chat agent's)."""
    return settings.task_pools["chat"]


def stream_chunks(settings: Settings, key: str, **body: Any) -> tuple[str, list[tuple[float, Any]]]:
    """(request id, [(arrival time, chunk)]) of a streamed completion, with the official
    client."""
    raw = client(settings, key, max_retries=0).chat.completions.with_raw_response.create(
        stream=True, stream_options={"include_usage": True}, **body)
    return raw.headers["x-request-id"], [(time.time(), chunk) for chunk in raw.parse()]


def content_of(arrivals: list[tuple[float, Any]]) -> list[tuple[float, str]]:
    return [(at, c.choices[0].delta.content) for at, c in arrivals
            if c.choices and c.choices[0].delta.content]


def assert_well_formed(arrivals: list[tuple[float, Any]]) -> None:
    """Role first, one finish_reason on the last choice chunk, usage in the final chunk."""
    chunks = [c for _, c in arrivals]
    assert chunks[0].choices[0].delta.role == "assistant"
    choice_chunks = [c for c in chunks if c.choices]
    finishes = [c.choices[0].finish_reason for c in choice_chunks]
    assert finishes[-1] is not None and not any(finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert all(c.usage is None for c in chunks[:-1])


def test_a_governed_call_streams_tokens_before_its_answer_exists(gateway: Settings,
                                                                 key: str) -> None:
    messages = [{"role": "user",
                 "content": f"Describe a river in three sentences. ({uuid.uuid4().hex[:8]})"}]
    request_id, arrivals = stream_chunks(gateway, key, model=local_pool(gateway),
                                         messages=messages, max_tokens=48)
    answer = fetch(gateway, key, request_id).json()["answer"]
    assert answer["status"] == "ok"
    content = content_of(arrivals)
    assert len(content) >= 2, f"expected token chunks, got {content}"
    assert content[0][0] * 1000 < answer["answered_at_ms"], \
        "the first token arrived after the answer was written"
    assert "".join(text for _, text in content) == answer["text"]
    assert_well_formed(arrivals)
    assert arrivals[-1][1].usage.completion_tokens == answer["usage"]["completion_tokens"] > 1
    # The same call again is a prompt-cache hit: no deltas; the text comes once, whole.
    request_id, again = stream_chunks(gateway, key, model=local_pool(gateway),
                                      messages=messages, max_tokens=48)
    assert "".join(text for _, text in content_of(again)) == answer["text"]
    assert fetch(gateway, key, request_id).json()["answer"]["timeline"][-1]["cache_hit"]
    plain = client(gateway, key).chat.completions.create(
        model=local_pool(gateway), messages=messages, max_tokens=48)
    assert plain.choices[0].message.content == answer["text"]


def test_an_upstream_model_streams_through_the_gateway(gateway: Settings, key: str,
                                                       upstream_proxy: FaultProxy) -> None:
    """The ``remote`` pool: an OpenAI-compatible upstream (llama.cpp's server) streamed as
    it streams (the test proxy passes its stream through)."""
    messages = [{"role": "user",
                 "content": f"Describe a mountain in two sentences. ({uuid.uuid4().hex[:8]})"}]
    request_id, arrivals = stream_chunks(gateway, key, model="remote", messages=messages,
                                         max_tokens=32)
    answer = fetch(gateway, key, request_id).json()["answer"]
    content = content_of(arrivals)
    assert answer["status"] == "ok" and len(content) >= 2
    assert content[0][0] * 1000 < answer["answered_at_ms"]
    assert "".join(text for _, text in content) == answer["text"]
    assert upstream_proxy.seen[-1]["body"]["stream"] is True
    assert_well_formed(arrivals)


def test_an_agent_streams_its_answer_to_a_spec_sse_parser(gateway: Settings, key: str) -> None:
    body = {"model": "agent/chat", "stream": True,
            "messages": [{"role": "user",
                          "content": f"Name three colours. ({uuid.uuid4().hex[:8]})"}]}
    events: list[tuple[float, str]] = []
    with http(gateway, key) as h, connect_sse(h, "POST", "/v1/chat/completions",
                                              json=body) as source:
        assert source.response.status_code == 200
        request_id = source.response.headers["x-request-id"]
        for sse in source.iter_sse():
            events.append((time.time(), sse.data))
    assert events[-1][1] == "[DONE]"
    chunks = [(at, json.loads(data)) for at, data in events[:-1]]
    content = [(at, c["choices"][0]["delta"].get("content")) for at, c in chunks
               if c["choices"] and c["choices"][0]["delta"].get("content")]
    answer = fetch(gateway, key, request_id).json()["answer"]
    assert len(content) >= 2
    assert content[0][0] * 1000 < answer["answered_at_ms"]
    assert "".join(text for _, text in content) == answer["text"]


def test_a_deciding_agent_streams_its_final_turn_only(gateway: Settings, key: str) -> None:
    marker = f"stream-agent-{uuid.uuid4().hex}"
    final = "Two plus two is four, as the calculator confirms without any doubt at all."
    script(gateway, marker,
           {"text": "Let me calculate.", "tool_calls": [{"name": "calculate",
                                                         "arguments": {"expression": "2+2"}}]},
           {"text": final, "delay_ms": 1500})
    request_id, arrivals = stream_chunks(
        gateway, key, model="agent/assistant",
        messages=[{"role": "user", "content": f"What is 2+2? {marker}"}])
    content = content_of(arrivals)
    answer = fetch(gateway, key, request_id).json()["answer"]
    assert answer["text"] == final
    assert len(content) >= 3 and content[0][0] * 1000 < answer["answered_at_ms"]
    assert "".join(text for _, text in content) == final
    assert_well_formed(arrivals)


def test_tool_call_deltas_reassemble_to_the_non_streamed_tool_call(gateway: Settings,
                                                                   key: str) -> None:
    marker = f"stream-tools-{uuid.uuid4().hex}"
    arguments = {"city": "Oslo", "note": "a long note " * 8}
    script(gateway, marker, {"tool_calls": [{"name": "get_weather", "arguments": arguments,
                                             "id": f"call_{uuid.uuid4().hex[:10]}"}]})
    body: Any = {"model": sorted(gateway.pools)[0], "tools": [WEATHER_TOOL],
                 "messages": [{"role": "user", "content": f"Weather? {marker}"}]}
    _, arrivals = stream_chunks(gateway, key, **body)
    plain = client(gateway, key).chat.completions.create(**body).choices[0]
    chunks = [c for _, c in arrivals]
    parts = [c for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert len(parts) >= 3, "the arguments come in pieces"
    streamed = reassemble(chunks)
    assert plain.finish_reason == "tool_calls"
    assert [(c.id, c.type, c.function.name, c.function.arguments) for c in streamed] == [
        (c.id, c.type, c.function.name, c.function.arguments)
        for c in plain.message.tool_calls or ()]
    assert json.loads(streamed[0].function.arguments) == arguments
    assert_well_formed(arrivals)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_a_retried_step_streams_one_attempt(gateway: Settings, key: str) -> None:
    """The first attempt fails (scripted 500); the text streamed is the retry's, once."""
    marker = f"stream-retry-{uuid.uuid4().hex}"
    text = "The second attempt answers this question in full sentences."
    script(gateway, marker, {"text": text, "delay_ms": 800,
                             "error": {"status": 500, "times": 1}})
    request_id, arrivals = stream_chunks(
        gateway, key, model=sorted(gateway.pools)[0],
        messages=[{"role": "user", "content": f"Answer. {marker}"}])
    answer = fetch(gateway, key, request_id).json()["answer"]
    assert [e["attempt"] for e in answer["timeline"]][-1] == 2
    assert "".join(t for _, t in content_of(arrivals)) == answer["text"] == text


def test_the_native_timeline_shows_deltas(gateway: Settings, key: str) -> None:
    marker = f"stream-native-{uuid.uuid4().hex}"
    text = "Deltas arrive on the timeline before the answer does, piece by piece."
    script(gateway, marker, {"text": text, "delay_ms": 1500})
    with http(gateway, key) as h:
        created = h.post("/v1/requests", json={"agent": "chat", "text": f"Talk. {marker}",
                                               "options": {"stream": "true"}})
    assert created.status_code == 202, created.text
    deltas: list[dict[str, Any]] = []
    answer: dict[str, Any] | None = None
    with http(gateway, key) as h, connect_sse(h, "GET", created.json()["links"]["events"]
                                              ) as source:
        for sse in source.iter_sse():
            if sse.event == "delta":
                deltas.append(json.loads(sse.data))
            elif sse.event == "answer":
                answer = json.loads(sse.data)
                break
    assert answer is not None and answer["text"] == text
    assert len(deltas) >= 3
    assert "".join(d["text"] for d in deltas) == text
    assert {(d["step_id"], d["attempt"]) for d in deltas} == {
        (deltas[0]["step_id"], deltas[0]["attempt"])}
    assert [d["seq"] for d in deltas] == list(range(len(deltas)))
    assert deltas[-1]["finish_reason"] == "stop"


def test_sampling_reaches_the_model(gateway: Settings, key: str) -> None:
    oai = client(gateway, key)
    question = [{"role": "user", "content": f"Invent a name for a cat. ({uuid.uuid4().hex[:6]})"}]

    def sample(seed: int) -> str:
        reply = oai.chat.completions.create(model=local_pool(gateway), messages=question,
                                            temperature=1.3, top_p=0.95, seed=seed,
                                            max_tokens=16)
        return reply.choices[0].message.content or ""

    first = sample(1)
    assert sample(1) == first, "the same seed samples the same text"
    assert len({first, sample(2), sample(3)}) >= 2, "other seeds sample otherwise"
    short = oai.chat.completions.create(model=local_pool(gateway), messages=question,
                                        max_completion_tokens=3)
    assert short.usage is not None and 0 < short.usage.completion_tokens <= 3


@pytest.mark.parametrize(("field", "value"), [
    ("max_tokens", 100_000), ("max_completion_tokens", 100_000), ("temperature", 2.5),
    ("top_p", 0), ("seed", -1), ("stop", ["a", "b", "c", "d", "e"])])
def test_out_of_range_sampling_is_400_naming_the_field(gateway: Settings, key: str,
                                                       field: str, value: Any) -> None:
    with http(gateway, key) as h:
        reply = h.post("/v1/chat/completions", json={
            "model": local_pool(gateway), field: value,
            "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == field
