"""Token streaming without a stack: backends' streams, the stream route and the client's
reading of it, the dispatcher's delta records, and which deltas the OpenAI edge shows."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from clawstream.config import Settings
from clawstream.gateway.errors import ApiError
from clawstream.gateway.models import ChatCompletionBody, OverCap
from clawstream.gateway.openai_edge import DeltaFollower, tool_call_deltas
from clawstream.inference.api import create_model_api
from clawstream.inference.backends.base import paced, split_text
from clawstream.inference.backends.simulated import SimulatedBackend
from clawstream.inference.client import (
    InferenceBackendError,
    InferenceClient,
    InferenceOverloaded,
)
from clawstream.inference.errors import BackendFailure, Overloaded
from clawstream.inference.protocol import ChatMessage, GenerateRequest, GenerationResult, ToolCall
from clawstream.inference.scripted import Script, ScriptedFixtureBackend
from clawstream.processors.caching.results import PromptCache
from clawstream.processors.deltas import StepDeltas
from clawstream.processors.records import Output
from clawstream.processors.validation import option_problem
from clawstream.schemas import decode, encode
from clawstream.schemas.names import STEP_DELTA
from clawstream.streams.topics import DELTAS

USER = ChatMessage(role="user", content="hello there")


def test_split_text_joins_to_the_text() -> None:
    text = "One two  three, four.\nFive"
    pieces = split_text(text)
    assert "".join(pieces) == text and len(pieces) >= 3
    assert split_text("") == []


async def test_paced_spreads_the_pieces() -> None:
    assert "".join([p async for p in paced("a b c d e f", 0.01)]) == "a b c d e f"


async def test_the_simulated_stream_is_its_answer_in_pieces() -> None:
    backend = SimulatedBackend(delay_ms=1)
    whole = await backend.generate([USER], 24, 0.0)
    items = [item async for item in backend.stream([USER], 24, 0.0)]
    *pieces, last = items
    assert len(pieces) >= 2 and "".join(pieces) == whole.text
    assert last == whole


async def test_a_scripted_text_turn_streams_and_a_tool_turn_comes_whole() -> None:
    backend = ScriptedFixtureBackend()
    marker = "stream-marker-1"
    backend.add(Script.model_validate({"marker": marker, "turns": [
        {"text": "It is sunny in Oslo today, friend.", "delay_ms": 20}]}))
    messages = [ChatMessage(role="user", content=f"weather {marker}")]
    *pieces, last = [item async for item in backend.stream(messages, 64, 0.0)]
    assert len(pieces) >= 3 and "".join(pieces) == last.text == "It is sunny in Oslo today, friend."
    backend.add(Script.model_validate({"marker": marker, "turns": [
        {"text": "checking", "tool_calls": [{"name": "get_weather"}]}]}))
    items = [item async for item in backend.stream(messages, 64, 0.0)]
    assert len(items) == 1 and items[0].tool_calls[0].name == "get_weather"


class StreamingModel:
    """A model replica's ``generate_stream``: pieces, then the result, or a failure."""

    def __init__(self) -> None:
        self.fail_at: int | None = None
        self.fail_with: Exception = BackendFailure("broke")

    async def generate(self, request: GenerateRequest, received_at: float) -> GenerationResult:
        raise AssertionError("the stream route is used")

    async def stream(self, request: GenerateRequest, received_at: float
                     ) -> AsyncIterator[str | GenerationResult]:
        for index, piece in enumerate(["Hel", "lo ", "world"]):
            if index == self.fail_at:
                raise self.fail_with
            yield piece
        yield GenerationResult(text="Hello world", model="m", backend="b", prompt_tokens=3,
                               completion_tokens=3, replica="r#0", run_ms=1.0)


def model_client(model: StreamingModel) -> InferenceClient:
    api = create_model_api(model.generate, paths=("/model/generate",), stream=model.stream)
    transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)
    return InferenceClient("http://x", http=httpx.AsyncClient(transport=transport,
                                                               base_url="http://x"))


async def test_the_stream_route_hands_pieces_then_the_result() -> None:
    pieces: list[str] = []

    async def on_delta(piece: str) -> None:
        pieces.append(piece)

    result = await model_client(StreamingModel()).generate(
        [{"role": "user", "content": "x"}], on_delta=on_delta)
    assert pieces == ["Hel", "lo ", "world"] and result.text == "".join(pieces)


async def test_a_stream_that_fails_at_once_is_an_http_error_and_later_an_error_line() -> None:
    async def ignore(piece: str) -> None:
        return None

    model = StreamingModel()
    model.fail_at, model.fail_with = 0, Overloaded("full", retry_after_s=2.0)
    with pytest.raises(InferenceOverloaded) as shed:
        await model_client(model).generate([{"role": "user", "content": "x"}], on_delta=ignore)
    assert shed.value.status == 503 and shed.value.retry_after == 2.0
    model.fail_at, model.fail_with = 2, BackendFailure("the model died")
    with pytest.raises(InferenceBackendError, match="the model died"):
        await model_client(model).generate([{"role": "user", "content": "x"}], on_delta=ignore)


class Collecting:
    def __init__(self) -> None:
        self.sent: list[Output] = []

    async def send(self, output: Output) -> None:
        encode(output.schema, output.record)  # it must be a valid record
        self.sent.append(output)


COMMAND: Any = {"request_id": "r1", "conversation_id": "t:c1", "step_id": "model:c1:ab",
                "step_index": 0, "attempt": 2}


async def test_step_deltas_send_the_first_piece_at_once_then_batch_then_finish() -> None:
    emitter = Collecting()
    deltas = StepDeltas(emitter, COMMAND, flush_ms=60_000)  # type: ignore[arg-type]
    for piece in ["Hel", "lo ", "wor", "ld"]:
        await deltas.text(piece)
    await deltas.finish(GenerationResult(
        text="Hello world", model="m", backend="b", prompt_tokens=1, completion_tokens=4,
        replica="r", run_ms=1.0, finish_reason="tool_calls",
        tool_calls=[ToolCall(id="c1", name="f", arguments="{}")]))
    records = [o.record for o in emitter.sent]
    assert {(o.topic, o.key, o.schema) for o in emitter.sent} == {
        (DELTAS.name, "t:c1", STEP_DELTA)}
    assert [(r["seq"], r["text"], r["finish_reason"]) for r in records] == [
        (0, "Hel", None), (1, "lo world", "tool_calls")]
    assert all(r["attempt"] == 2 for r in records)
    assert records[-1]["tool_calls"] == [{"id": "c1", "name": "f", "arguments_json": "{}"}]
    name, decoded = decode(encode(STEP_DELTA, records[0]))
    assert name == STEP_DELTA and decoded["text"] == "Hel"


def delta(step: str, attempt: int, seq: int, text: str, finish: str | None = None,
          calls: list[dict[str, str]] | None = None) -> dict[str, Any]:
    return {"step_id": step, "attempt": attempt, "seq": seq, "text": text,
            "finish_reason": finish, "tool_calls": calls or []}


def shown(follower: DeltaFollower, *deltas: dict[str, Any]) -> str:
    return "".join(d.get("content", "") for x in deltas for d in follower.take(x))


def test_the_follower_shows_one_attempt_in_order() -> None:
    follower = DeltaFollower(passthrough=True)
    text = shown(follower, delta("s", 1, 0, "Hel"), delta("s", 2, 0, "XX"),
                 delta("s", 1, 1, "lo"), delta("s", 1, 1, "lo"), delta("s", 1, 2, "!", "stop"),
                 delta("s", 2, 1, "YY", "stop"))
    assert text == "Hello!"
    assert follower.rest({"text": "Hello!", "tool_calls": []}) == []


def test_a_gap_stops_the_attempt_and_the_answer_completes_the_text() -> None:
    follower = DeltaFollower(passthrough=True)
    assert shown(follower, delta("s", 1, 0, "Hel"), delta("s", 1, 2, "XX"),
                 delta("s", 1, 3, "YY")) == "Hel"
    assert follower.rest({"text": "Hello world", "tool_calls": []}) == [{"content": "lo world"}]


def test_a_cache_hit_streams_the_whole_answer_once() -> None:
    follower = DeltaFollower(passthrough=False)
    assert follower.rest({"text": "cached", "tool_calls": []}) == [{"content": "cached"}]


def test_an_agent_shows_its_final_turn_not_its_decisions() -> None:
    follower = DeltaFollower(passthrough=False)
    call = {"id": "c", "name": "search", "arguments_json": "{}"}
    text = shown(follower, delta("turn1", 1, 0, "let me look", "tool_calls", [call]),
                 delta("turn2", 1, 0, "Found "), delta("turn2", 1, 1, "it.", "stop"))
    assert text == "Found it."
    assert follower.rest({"text": "Found it.", "tool_calls": []}) == []


def reassemble(deltas: list[dict[str, Any]]) -> list[dict[str, str]]:
    """What an OpenAI client builds from streamed tool-call deltas (by index)."""
    calls: dict[int, dict[str, str]] = {}
    for d in deltas:
        for part in d.get("tool_calls", ()):
            call = calls.setdefault(part["index"], {"id": "", "name": "", "arguments": ""})
            call["id"] += part.get("id") or ""
            call["name"] += part.get("function", {}).get("name") or ""
            call["arguments"] += part.get("function", {}).get("arguments") or ""
    return [calls[i] for i in sorted(calls)]


def test_a_governed_calls_tool_calls_stream_as_openai_streams_them() -> None:
    arguments = json.dumps({"city": "Oslo", "note": "x" * 80})
    call = {"id": "call_1", "name": "get_weather", "arguments_json": arguments}
    follower = DeltaFollower(passthrough=True)
    out = follower.take(delta("s", 1, 0, "", "tool_calls", [call]))
    assert out[0] == {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                      "function": {"name": "get_weather", "arguments": ""}}]}
    assert len(out) > 2, "the arguments come in pieces"
    assert reassemble(out) == [{"id": "call_1", "name": "get_weather", "arguments": arguments}]
    assert follower.rest({"text": "", "tool_calls": [call]}) == []
    # nothing streamed (a cache hit): the answer's calls, in the same shape
    late = DeltaFollower(passthrough=True).rest({"text": "", "tool_calls": [call]})
    assert late == tool_call_deltas([call])


def body(**fields: Any) -> ChatCompletionBody:
    return ChatCompletionBody.model_validate(
        {"model": "default", "messages": [{"role": "user", "content": "x"}], **fields})


def test_sampling_goes_into_the_options_and_max_tokens_is_capped() -> None:
    options = body(temperature=0.7, top_p=0.9, seed=7, stop="END",
                   max_completion_tokens=20).sampling_options(1024)
    assert options == {"max_tokens": "20", "temperature": "0.7", "top_p": "0.9", "seed": "7",
                       "stop": '["END"]'}
    assert body().sampling_options(1024) == {}
    with pytest.raises(OverCap) as over:
        body(max_tokens=2000).sampling_options(1024)
    assert over.value.field == "max_tokens"
    assert not isinstance(over.value, ApiError)


@pytest.mark.parametrize(("options", "named"), [
    ({"temperature": "2.5"}, "temperature"), ({"temperature": "hot"}, "temperature"),
    ({"top_p": "0"}, "top_p"), ({"top_p": "1.5"}, "top_p"), ({"seed": "x"}, "seed"),
    ({"stop": "END"}, "stop"), ({"stop": '["a", "b", "c", "d", "e"]'}, "stop"),
    ({"stop": '[""]'}, "stop"), ({"stream": "maybe"}, "stream")])
def test_bad_sampling_options_are_refused_naming_the_option(options: dict[str, str],
                                                            named: str) -> None:
    problem = option_problem(options)
    assert problem is not None and f"option {named}" in problem


def test_good_sampling_options_pass() -> None:
    assert option_problem({"temperature": "0", "top_p": "1", "seed": "3", "stop": '["."]',
                           "stream": "true"}) is None


def test_the_prompt_cache_key_holds_the_sampling_that_was_set() -> None:
    cache = PromptCache(None, Settings(), time.time)  # type: ignore[arg-type]
    call: Any = {"model": "default", "prompt_version": "p", "max_tokens": 8,
                 "temperature": 0.0, "tools": [], "tool_choice": None, "top_p": None,
                 "stop": [], "seed": None, "stream": False,
                 "messages": [{"role": "user", "content": "hi"}]}
    plain = cache.key(call, "m")
    assert cache.key({**call, "stream": True}, "m") == plain, "streaming is not sampling"
    keys = {cache.key({**call, **change}, "m") for change in (
        {"top_p": 0.5}, {"seed": 1}, {"seed": 2}, {"stop": ["."]}, {"max_tokens": 9})}
    assert len(keys) == 5 and plain not in keys


def test_streaming_or_not_is_the_same_request_for_an_idempotency_key() -> None:
    from clawstream.gateway.service import STREAM_OPTION, Ask

    plain = Ask(tenant_id="t", user_id="u", agent="chat", text="hi")
    streamed = Ask(tenant_id="t", user_id="u", agent="chat", text="hi",
                   options={STREAM_OPTION: "true"})
    assert plain.fingerprint() == streamed.fingerprint()
    other = Ask(tenant_id="t", user_id="u", agent="chat", text="hi", options={"seed": "1"})
    assert other.fingerprint() != plain.fingerprint()
