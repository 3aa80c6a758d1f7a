"""The coordinator's side of caching: step commands carry the request's cache switches and
the agent's TTL; the answer adds up what every step's caches did."""

from __future__ import annotations

from typing import Any

from clawstream.processors.conversation import Decision, Rules, on_request, on_result
from clawstream.processors.policy import Policy
from clawstream.processors.registry import Registry, register_all
from clawstream.schemas import encode
from clawstream.schemas.names import AGENT_ANSWER, STEP_COMMAND
from clawstream.streams.publisher import new_request
from clawstream.streams.topics import ANSWERS, INFERENCE_REQUESTS, TOOL_REQUESTS

POLICY = Policy(interactive_step_ms=1000, retry_base_ms=100, retry_cap_ms=1000)
RULES = Rules(POLICY, register_all(Registry(), ["clawstream.processors.builtin",
                                                 "fixtures.faults"]))


def _command(decision: Decision) -> dict[str, Any]:
    [cmd] = [o.record for o in decision.outputs
             if o.topic in (INFERENCE_REQUESTS.name, TOOL_REQUESTS.name)]
    encode(STEP_COMMAND, cmd)  # fits the schema
    return cmd


def _result(cmd: dict[str, Any], output: str, hit: bool, cache: list[dict[str, Any]],
            cost: float, saved: float) -> dict[str, Any]:
    return {
        "step_id": cmd["step_id"], "step_index": cmd["step_index"],
        "step_type": cmd["step_type"], "attempt": cmd["attempt"],
        "request_id": cmd["request_id"], "conversation_id": cmd["conversation_id"],
        "trace_id": cmd["trace_id"], "status": "ok", "output": output, "error": None,
        "worker": "w", "issued_at_ms": cmd["issued_at_ms"], "started_at_ms": 10,
        "finished_at_ms": 20, "cache_hit": hit, "model": "m", "backend": "b",
        "usage": {"prompt_tokens": 0 if hit else 30, "completion_tokens": 0 if hit else 10,
                  "cost_usd": cost, "saved_tokens": 40 if hit else 0, "saved_cost_usd": saved},
        "cache": cache, "tool_calls": [], "finish_reason": None,
    }


def _layer(name: str, hits: int, misses: int, saved: float) -> dict[str, Any]:
    return {"layer": name, "hits": hits, "misses": misses, "saved_tokens": 40 * hits,
            "saved_cost_usd": saved}


def test_commands_carry_the_request_options_and_the_agent_ttl() -> None:
    plain = _command(on_request(None, None, new_request(
        agent="chat", conversation_id="c1", text="hi"), 0, RULES))
    chat = RULES.catalog.agent("chat")
    assert chat is not None
    assert plain["cache"] == {"enabled": True, "max_age_s": None, "ttl_s": chat.cache_ttl_s}
    opted_out = _command(on_request(None, None, new_request(
        agent="researcher", conversation_id="c2", text="hi",
        options={"no-cache": "true", "max_cache_age_s": "30"}), 0, RULES))
    assert opted_out["step_type"] == "tool"
    assert opted_out["cache"] == {"enabled": False, "max_age_s": 30.0, "ttl_s": None}


def test_the_answer_adds_up_each_layer_over_the_steps() -> None:
    decision = on_request(None, None, new_request(agent="researcher", conversation_id="c",
                                                  text="where?"), 0, RULES)
    tool_cmd = _command(decision)
    decision = on_result(decision.conversation, _result(
        tool_cmd, '[{"doc": "d", "text": "a note"}]', True,
        [_layer("tool", 1, 0, 0.001)], 0.0, 0.001), 1, RULES)
    model_cmd = _command(decision)
    assert model_cmd["cache"]["enabled"]
    decision = on_result(decision.conversation, _result(
        model_cmd, "here", False, [_layer("prompt", 0, 1, 0.0)], 0.004, 0.0), 2, RULES)
    [answer] = [o.record for o in decision.outputs if o.topic == ANSWERS.name]
    assert answer["cache"] == [_layer("prompt", 0, 1, 0.0), _layer("tool", 1, 0, 0.001)]
    assert answer["usage"]["cost_usd"] == 0.004 and answer["usage"]["saved_cost_usd"] == 0.001
    encode(AGENT_ANSWER, answer)
