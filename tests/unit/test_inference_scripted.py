"""The scripted fixture and the router that puts it in front of the real backends."""

from __future__ import annotations

import time
from typing import Any

import pytest
from pydantic import ValidationError

from clawstream.inference.backends.simulated import SimulatedBackend
from clawstream.inference.errors import (
    BackendFailure,
    GenerationTimeout,
    InputRejected,
    Overloaded,
)
from clawstream.inference.protocol import (
    GENERATE_PATH,
    INGRESS_GENERATE_PATH,
    UPSTREAM_GENERATE_PATH,
    ChatMessage,
    GenerateRequest,
    ToolCall,
    generate_path,
)
from clawstream.inference.routing import LOCAL, UPSTREAM, BackendRouter, deployment_for
from clawstream.inference.scripted import (
    SCRIPTED_MODEL_ID,
    Script,
    ScriptedFixtureBackend,
    turn_index,
)

MARKER = "[script-7f3a]"


def _script(*turns: dict[str, Any]) -> Script:
    return Script.model_validate({"marker": MARKER, "turns": list(turns)})


def _user(text: str = f"check the weather {MARKER}") -> ChatMessage:
    return ChatMessage(role="user", content=text)


def _after(messages: list[ChatMessage], call: ToolCall, result: str) -> list[ChatMessage]:
    return [*messages, ChatMessage(role="assistant", content="", tool_calls=[call]),
            ChatMessage(role="tool", content=result, tool_call_id=call.id)]


def test_turn_is_counted_from_the_last_user_message() -> None:
    call = ToolCall(id="c1", name="t")
    first = [ChatMessage(role="system", content="s"), _user()]
    assert turn_index(first) == 0
    second = _after(first, call, "r")
    assert turn_index(second) == 1
    assert turn_index(_after(second, call.model_copy(update={"id": "c2"}), "r")) == 2
    # a new question starts the count again, whatever came before
    again = [*second, ChatMessage(role="assistant", content="done"), _user("next")]
    assert turn_index(again) == 0


async def test_a_tool_loop_walks_the_script() -> None:
    backend = ScriptedFixtureBackend()
    backend.add(_script(
        {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}},
                        {"name": "get_time", "arguments": "not json", "id": "mine"}]},
        {"text": "Sunny at noon."},
    ))
    messages = [_user()]
    first = await backend.generate(messages, 64, 0.0)
    assert first.finish_reason == "tool_calls" and first.text == ""
    assert [(c.name, c.arguments) for c in first.tool_calls] == [
        ("get_weather", '{"city": "Oslo"}'), ("get_time", "not json")]
    assert first.tool_calls[1].id == "mine"
    assert first.tool_calls[0].id.startswith("call_")
    # deterministic: the same request gets the same ids
    assert (await backend.generate(messages, 64, 0.0)).tool_calls == first.tool_calls
    messages = _after(messages, first.tool_calls[0], "sunny")
    final = await backend.generate(messages, 64, 0.0)
    assert (final.text, final.finish_reason, final.tool_calls) == ("Sunny at noon.", "stop", ())
    assert final.prompt_tokens > first.prompt_tokens > 0 and final.completion_tokens > 0
    # past the end of the script: a readable refusal, never a made-up answer
    messages = _after(messages, first.tool_calls[1], "again")
    with pytest.raises(InputRejected, match="has 2 turns; this request asks for turn 3"):
        await backend.generate(messages, 64, 0.0)


@pytest.mark.parametrize(
    ("status", "kind"),
    [(429, Overloaded), (503, Overloaded), (500, BackendFailure), (504, GenerationTimeout),
     (400, InputRejected)],
)
async def test_a_turn_fails_its_times_then_answers(status: int, kind: type[Exception]) -> None:
    backend = ScriptedFixtureBackend()
    backend.add(_script({"text": "ok", "error": {"status": status, "times": 2,
                                                 "retry_after_s": 3}}))
    for _ in range(2):
        with pytest.raises(kind) as failure:
            await backend.generate([_user()], 8, 0.0)
        if kind is Overloaded:
            assert isinstance(failure.value, Overloaded)
            assert failure.value.retry_after_s == 3
    assert (await backend.generate([_user()], 8, 0.0)).text == "ok"
    # registering the script again re-arms its errors
    backend.add(_script({"text": "ok", "error": {"status": status}}))
    with pytest.raises(kind):
        await backend.generate([_user()], 8, 0.0)


async def test_a_turn_waits_its_delay() -> None:
    backend = ScriptedFixtureBackend()
    backend.add(_script({"text": "slow", "delay_ms": 40}))
    started = time.perf_counter()
    await backend.generate([_user()], 8, 0.0)
    assert time.perf_counter() - started >= 0.039


@pytest.mark.parametrize(
    "payload",
    [
        {"marker": "short", "turns": [{"text": "x"}]},
        {"marker": MARKER, "turns": []},
        {"marker": MARKER, "turns": [{}]},
        {"marker": MARKER, "turns": [{"error": {"status": 500}}]},
        {"marker": MARKER, "turns": [{"text": "x", "error": {"status": 418}}]},
        {"marker": MARKER, "turns": [{"tool_calls": [{"name": "bad name"}]}]},
        {"marker": MARKER, "turns": [{"text": "x", "delay_ms": 10**6}]},
    ],
)
def test_bad_scripts_are_refused(payload: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Script.model_validate(payload)


async def test_router_puts_a_marked_request_on_its_script() -> None:
    scripted = ScriptedFixtureBackend()
    router = BackendRouter([SimulatedBackend(delay_ms=0)], scripted)
    plain = GenerateRequest(messages=[_user("no marker here")])
    assert router.pick(plain).name == "simulated"
    scripted.add(_script({"text": "scripted"}))
    marked = GenerateRequest(messages=[_user()], model="simulated-echo")
    assert router.pick(marked) is scripted
    assert scripted.name == scripted.model_id == SCRIPTED_MODEL_ID
    assert router.pick(plain.model_copy(update={"model": "simulated-echo"})).name == "simulated"
    with pytest.raises(InputRejected, match="not served here"):
        router.pick(plain.model_copy(update={"model": "gpt-9"}))
    assert [(c.model, c.backend) for c in router.served()] == [("simulated-echo", "simulated")]
    # without the fixture (production), a marker means nothing
    assert BackendRouter([SimulatedBackend(delay_ms=0)]).pick(marked).name == "simulated"


def test_deployment_for_model_ids() -> None:
    upstreams = {"remote-a"}
    assert deployment_for("remote-a", upstreams) == UPSTREAM
    assert deployment_for(None, upstreams) == LOCAL
    assert deployment_for("smollm2-135m-instruct-q4_1", upstreams) == LOCAL


@pytest.mark.parametrize(("model", "upstreams", "path"), [
    # a client that knows the pools' upstream models: each model's own route, no ingress
    (None, {"remote-a"}, GENERATE_PATH),
    ("smollm2-135m-instruct-q4_1", {"remote-a"}, GENERATE_PATH),
    ("remote-a", {"remote-a"}, UPSTREAM_GENERATE_PATH),
    ("gpt-nine", {"remote-a"}, GENERATE_PATH),  # the local generator answers "not served"
    ("remote-a", set(), GENERATE_PATH),  # no upstream pools: nothing goes to /upstream
    # a client that does not know them: a named model through the ingress, which does
    (None, None, GENERATE_PATH),
    ("remote-a", None, INGRESS_GENERATE_PATH),
])
def test_clients_route_by_the_ingress_rule(model: str | None, upstreams: set[str] | None,
                                           path: str) -> None:
    assert generate_path(model, upstreams) == path
    if upstreams is not None:  # the same deployment the ingress would pick
        assert (path == UPSTREAM_GENERATE_PATH) == (deployment_for(model, upstreams) == UPSTREAM)
