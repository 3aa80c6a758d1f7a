"""Agents that decide (issue 12), as rules: the model's tool calls run in parallel as steps
and are joined, every choice is a decision event, a bad call is answered with the error
for the model to correct, limits end in a degraded answer with what the agent has."""

from __future__ import annotations

import json
import types
from typing import Any

import pytest

from clawstream.config import Settings
from clawstream.processors.agents import PASSTHROUGH_PREFIX, AgentSpec
from clawstream.processors.api import Agent, tool
from clawstream.processors.conversation import Decision, Rules, on_request, on_result
from clawstream.processors.flow.flags import FlagView
from clawstream.processors.flow.pools import route
from clawstream.processors.policy import Policy
from clawstream.processors.registry import Registry, RegistryError, load_registry, register_module
from clawstream.processors.state import upgrade
from clawstream.processors.tools.base import ToolArgumentsInvalid, ToolContext
from clawstream.schemas import encode
from clawstream.schemas.names import AGENT_ANSWER, STEP_COMMAND
from clawstream.streams.publisher import new_request
from clawstream.streams.topics import ANSWERS, EVENTS, INFERENCE_REQUESTS, TOOL_REQUESTS


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool(mutating=True, attempts=3, cache_params=("city",))
async def book(city: str, nights: int = 1, ctx: ToolContext | None = None) -> dict[str, Any]:
    """Book a hotel."""
    return {"city": city, "nights": nights, "key": ctx.step_id if ctx else None}


MATH = Agent(name="math", instructions="Use add.", tools=[add, book], max_steps=4)
LIMITED = Agent(name="budget", instructions="x", tools=[add], token_budget=50)
PASS = AgentSpec(name="passthrough", version="1", system_prompt="", passthrough=True)


def _registry() -> Registry:
    registry = Registry()
    registry.add(MATH)
    registry.add(LIMITED)
    registry.add_agent(PASS)
    registry.check()
    return registry


RULES = Rules(Policy(interactive_step_ms=1000), _registry())


def _commands(decision: Decision, topic: str) -> list[dict[str, Any]]:
    return [dict(o.record) for o in decision.outputs if o.topic == topic]


def _events(decision: Decision, kind: str) -> list[dict[str, Any]]:
    return [dict(o.record) for o in decision.outputs
            if o.topic == EVENTS.name and o.record["event_type"] == kind]  # type: ignore[typeddict-item]


def _result(cmd: dict[str, Any], output: str = "", *, calls: list[dict[str, str]] = (),
            error: dict[str, Any] | None = None, tokens: int = 10) -> Any:
    return {
        "step_id": cmd["step_id"], "step_index": cmd["step_index"],
        "step_type": cmd["step_type"], "attempt": cmd["attempt"],
        "request_id": cmd["request_id"], "conversation_id": cmd["conversation_id"],
        "trace_id": cmd["trace_id"], "status": "error" if error else "ok", "output": output,
        "error": error, "worker": "w", "issued_at_ms": cmd["issued_at_ms"],
        "started_at_ms": 1, "finished_at_ms": 2, "cache_hit": False, "model": "small",
        "backend": "b", "usage": {"prompt_tokens": tokens, "completion_tokens": 5,
                                  "cost_usd": 0.0, "saved_tokens": 0, "saved_cost_usd": 0.0},
        "cache": [], "tool_calls": list(calls), "finish_reason": None}


def _call(cid: str, name: str, args: dict[str, Any] | str) -> dict[str, str]:
    return {"id": cid, "name": name,
            "arguments_json": args if isinstance(args, str) else json.dumps(args)}


def _start(agent: str = "math", text: str = "what is 2+3 and 4+5?") -> Decision:
    return on_request(None, None, new_request(agent=agent, conversation_id="c", text=text),
                      0, RULES, "t/0/1")


def test_tool_calls_run_in_parallel_and_are_joined_before_the_next_model_turn() -> None:
    decision = _start()
    [model] = _commands(decision, INFERENCE_REQUESTS.name)
    tools = model["model_call"]["tools"]
    assert [t["name"] for t in tools] == ["add", "book"]
    schema = json.loads(tools[0]["parameters_json"])
    assert schema["required"] == ["a", "b"] and tools[0]["description"] == "Add two integers."
    decision = on_result(decision.conversation, _result(
        model, "Let me add.", calls=[_call("c1", "add", {"a": 2, "b": 3}),
                                     _call("c2", "add", {"a": 4, "b": 5})]), 3, RULES)
    [decided] = _events(decision, "decision")
    assert decided["detail"]["kind"] == "tool_calls" and decided["detail"]["tools"] == "add,add"
    first, second = _commands(decision, TOOL_REQUESTS.name)
    assert first["step_id"] != second["step_id"]
    assert (first["tool_call"]["call_id"], second["tool_call"]["call_id"]) == ("c1", "c2")
    for cmd in (first, second):
        encode(STEP_COMMAND, cmd)
    waiting = on_result(decision.conversation, _result(second, "9"), 4, RULES)
    assert not _commands(waiting, INFERENCE_REQUESTS.name)  # one call still out
    joined = on_result(waiting.conversation, _result(first, "5"), 5, RULES)
    [again] = _commands(joined, INFERENCE_REQUESTS.name)
    messages = again["model_call"]["messages"]
    assert [m["role"] for m in messages[-3:]] == ["assistant", "tool", "tool"]
    assert [(m["tool_call_id"], m["content"]) for m in messages[-2:]] == [("c1", "5"),
                                                                          ("c2", "9")]
    assert messages[-3]["tool_calls"][0]["name"] == "add"
    done = on_result(joined.conversation, _result(again, "2+3=5 and 4+5=9."), 6, RULES)
    [answer] = _commands(done, ANSWERS.name)
    encode(AGENT_ANSWER, answer)
    assert (answer["status"], answer["text"]) == ("ok", "2+3=5 and 4+5=9.")
    assert [e["detail"]["kind"] for e in _events(done, "decision")] == ["final"]
    assert answer["usage"]["prompt_tokens"] == 40  # two model steps, two tool steps


def test_a_bad_call_is_answered_with_the_error_for_the_model_to_correct() -> None:
    decision = _start()
    [model] = _commands(decision, INFERENCE_REQUESTS.name)
    decision = on_result(decision.conversation, _result(model, calls=[
        _call("u", "divide", {"a": 1}), _call("j", "add", "{not json"),
        _call("v", "add", {"a": "two", "b": 3})]), 3, RULES)
    [issued] = _commands(decision, TOOL_REQUESTS.name)  # only the one that may run
    assert issued["tool_call"]["call_id"] == "v"
    invalid = {"error_class": "ToolArgumentsInvalid", "retryable": False,
               "message": "invalid arguments for add: a: Input should be a valid integer",
               "retry_after_ms": None, "infrastructure": False}
    decision = on_result(decision.conversation, _result(issued, error=invalid), 4, RULES)
    assert not _commands(decision, ANSWERS.name)
    [again] = _commands(decision, INFERENCE_REQUESTS.name)
    results = {m["tool_call_id"]: m["content"] for m in again["model_call"]["messages"]
               if m["role"] == "tool"}
    assert "unknown tool 'divide'" in results["u"]
    assert "not a JSON object" in results["j"]
    assert "a valid integer" in results["v"]


def test_max_steps_ends_in_a_degraded_answer_with_what_the_agent_has() -> None:
    decision = _start()
    for turn in range(2):  # model, then three calls: over the limit of four steps
        [model] = _commands(decision, INFERENCE_REQUESTS.name)
        calls = [_call(f"c{turn}{i}", "add", {"a": i, "b": i}) for i in range(2 + turn)]
        decision = on_result(decision.conversation,
                             _result(model, f"thinking {turn}", calls=calls), 3, RULES)
        for cmd in _commands(decision, TOOL_REQUESTS.name):
            decision = on_result(decision.conversation, _result(cmd, "2"), 4, RULES)
    [answer] = _commands(decision, ANSWERS.name)
    assert answer["status"] == "degraded" and "limit of 4 steps" in answer["reason"]
    assert answer["text"] == "thinking 1"


def test_a_token_budget_ends_in_a_degraded_answer() -> None:
    decision = _start("budget")
    [model] = _commands(decision, INFERENCE_REQUESTS.name)
    decision = on_result(decision.conversation, _result(
        model, calls=[_call("c", "add", {"a": 1, "b": 2})], tokens=30), 3, RULES)
    [cmd] = _commands(decision, TOOL_REQUESTS.name)
    decision = on_result(decision.conversation, _result(cmd, "3"), 4, RULES)
    [answer] = _commands(decision, ANSWERS.name)
    assert answer["status"] == "degraded" and "token budget" in answer["reason"]
    assert answer["text"].startswith("Partial results: 3")


def test_a_pass_through_call_returns_the_models_tool_calls_unchanged() -> None:
    req = {**new_request(agent="passthrough", conversation_id="c", text="weather?"),
           "messages": [{"role": "user", "content": "weather in Oslo?", "tool_calls": [],
                         "tool_call_id": None, "name": None}],
           "tools": [{"name": "get_weather", "description": "", "parameters_json": "{}"}]}
    decision = on_request(None, None, req, 0, RULES, "t/0/1")  # type: ignore[arg-type]
    [model] = _commands(decision, INFERENCE_REQUESTS.name)
    assert [m["role"] for m in model["model_call"]["messages"]] == ["user"]
    assert model["model_call"]["tools"][0]["name"] == "get_weather"
    calls = [_call("x1", "get_weather", {"city": "Oslo"})]
    done = on_result(decision.conversation, _result(model, "", calls=calls), 1, RULES)
    [answer] = _commands(done, ANSWERS.name)
    assert answer["tool_calls"] == calls and answer["finish_reason"] == "tool_calls"
    assert not _commands(done, TOOL_REQUESTS.name)


def test_a_pass_through_call_samples_as_its_client_asked() -> None:
    def model_call(options: dict[str, str]) -> dict[str, Any]:
        req = {**new_request(agent="passthrough", conversation_id="c", text="hi",
                             options=options)}
        decision = on_request(None, None, req, 0, RULES, "t/0/1")  # type: ignore[arg-type]
        [model] = _commands(decision, INFERENCE_REQUESTS.name)
        return dict(model["model_call"])

    default = model_call({})
    assert (default["max_tokens"], default["temperature"], default["top_p"], default["stop"],
            default["seed"], default["stream"]) == (PASS.max_tokens, 0.0, None, [], None, False)
    assert model_call({"max_tokens": "7"})["max_tokens"] == 7
    assert model_call({"max_tokens": "100000"})["max_tokens"] == RULES.policy.max_model_tokens
    asked = model_call({"temperature": "0.8", "top_p": "0.5", "stop": '["END", "."]',
                        "seed": "42", "stream": "true"})
    assert (asked["temperature"], asked["top_p"], asked["stop"], asked["seed"],
            asked["stream"]) == (0.8, 0.5, ["END", "."], 42, True)


def test_a_worker_has_one_pass_through_agent_per_pool_routed_to_it() -> None:
    settings = Settings()
    registry = load_registry(settings)
    assert registry.pools == sorted(settings.pools)
    assert not [a for a in registry.agent_names if a.startswith(PASSTHROUGH_PREFIX)]
    for pool in settings.pools:
        spec = registry.agent(PASSTHROUGH_PREFIX + pool)
        assert spec is not None and spec.passthrough
        assert route(spec.task_class, settings, FlagView({})).pool == pool


async def test_function_tools_validate_and_run() -> None:
    ctx = ToolContext(step_id="tool:c:1", attempt=1, timeout_s=1.0)
    assert await add.run({"a": 2, "b": 40}, ctx) == "42"
    booked = json.loads(await book.run({"city": "Oslo"}, ctx))
    assert booked == {"city": "Oslo", "nights": 1, "key": "tool:c:1"}
    assert book.spec.mutating and book.spec.max_attempts == 3
    assert "ctx" not in json.loads(book.spec.parameters_json or "{}")["properties"]
    with pytest.raises(ToolArgumentsInvalid, match="b: Field required"):
        await add.run({"a": 1}, ctx)
    with pytest.raises(ToolArgumentsInvalid, match="c: Extra inputs are not permitted"):
        await add.run({"a": 1, "b": 2, "c": 3}, ctx)
    assert add(1, 2) == 3  # still the plain function
    with pytest.raises(ValueError, match="cache_params"):
        tool(name="t", cache_params=("nope",))(lambda x: x)


def test_a_module_of_agents_and_tools_is_found_without_a_register_function() -> None:
    module = types.ModuleType("team_agents")
    module.MATH = Agent(name="m2", instructions="x", tools=[add])  # type: ignore[attr-defined]
    module.add = add  # type: ignore[attr-defined]
    registry = Registry()
    register_module(registry, module)
    registry.check()
    assert registry.agent("m2") is not None and registry.tool_spec("add") == add.spec
    with pytest.raises(RegistryError, match="defines no Agent"):
        register_module(Registry(), types.ModuleType("empty"))
    lonely = Registry()
    lonely.add_agent(AgentSpec(name="x", version="1", system_prompt="", tools=("ghost",)))
    with pytest.raises(RegistryError, match="unknown tool 'ghost'"):
        lonely.check()


def test_a_state_from_the_release_before_goes_on() -> None:
    decision = _start()
    assert decision.conversation is not None
    active: Any = dict(decision.conversation["active"] or {})
    run = active.pop("steps")[0]
    active.pop("transcript")
    active.pop("taken")
    old: Any = {**decision.conversation, "active": {
        **active, "pending": run["cmd"], "retry_at_ms": None, "attempts": []}}
    upgraded = upgrade(old)
    assert upgraded["active"] is not None
    assert upgraded["active"]["steps"][0]["cmd"] == run["cmd"]
    done = on_result(upgraded, _result(run["cmd"], "fine"), 5, RULES)
    assert _commands(done, ANSWERS.name)[0]["text"] == "fine"


def test_a_model_that_repeats_its_last_calls_is_stopped_with_what_it_has() -> None:
    decision = _start()
    for turn in range(2):
        [model] = _commands(decision, INFERENCE_REQUESTS.name)
        call = _call(f"c{turn}", "add", {"b": 3, "a": 2} if turn else {"a": 2, "b": 3})
        decision = on_result(decision.conversation, _result(model, calls=[call]), 3, RULES)
        for cmd in _commands(decision, TOOL_REQUESTS.name):
            decision = on_result(decision.conversation, _result(cmd, "5"), 4, RULES)
    [answer] = _commands(decision, ANSWERS.name)
    assert answer["status"] == "degraded" and "same tool calls again" in answer["reason"]
    assert answer["text"] == "Partial results: 5"
