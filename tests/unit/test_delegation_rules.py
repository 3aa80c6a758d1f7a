"""Sub-agents (issue 15), as rules: a delegation is a child request whose ids derive from
the parent's step and attempt, whose contracts (deadline, budget, lane, depth) come from
the parent's; the child's answer comes back as the step's result; limits and failures are
tool errors the model reads; a parent that ends cancels the children still running."""

from __future__ import annotations

import json
from typing import Any

import pytest

from clawstream.processors import delegation
from clawstream.processors.agents import FanOut, ModelStep, SubAgent
from clawstream.processors.api import Agent, tool
from clawstream.processors.conversation import (
    Decision,
    Rules,
    on_cancel,
    on_request,
    on_result,
    on_wakeup,
)
from clawstream.processors.delegation import with_parent_results
from clawstream.processors.policy import Policy
from clawstream.processors.registry import Registry, RegistryError
from clawstream.schemas import encode
from clawstream.schemas.names import AGENT_REQUEST, CANCEL, STEP_RESULT
from clawstream.streams.publisher import new_request
from clawstream.streams.topics import ANSWERS, INFERENCE_REQUESTS, RESULTS
from tests.unit.test_agent_loop import _result


@tool
def note(text: str) -> str:
    """Write a note down."""
    return text


LEAD = Agent(name="lead", instructions="Delegate.", tools=[note],
             subagents=["helper", "lead"], max_fanout=3, max_depth=1, token_budget=10_000)
HELPER = Agent(name="helper", instructions="Help.", description="Answers one question.",
               tools=[note])
RETRIER = Agent(name="retrier", instructions="Delegate.",
                subagents=[SubAgent("helper", attempts=2)])
PANEL = Agent(name="panel", instructions="Sum up.",
              plan=(FanOut(("helper",), tasks=lambda req: ["first", "second"], quorum=1),
                    ModelStep()))


def _registry() -> Registry:
    registry = Registry()
    registry.add(LEAD)
    registry.add(HELPER)
    registry.add(PANEL)
    registry.add(RETRIER)
    registry.check()
    return registry


RULES = Rules(Policy(interactive_step_ms=1000), _registry())
T0 = 1_000_000


def _out(decision: Decision, schema: str | None = None, topic: str | None = None
         ) -> list[dict[str, Any]]:
    outputs = with_parent_results(decision.outputs)
    for o in outputs:
        encode(o.schema, o.record)  # every record is valid on the wire
    return [dict(o.record) for o in outputs
            if (schema is None or o.schema == schema) and (topic is None or o.topic == topic)]


def _delegate(cid: str, agent: str, task: str) -> dict[str, str]:
    return {"id": cid, "name": "delegate",
            "arguments_json": json.dumps({"agent": agent, "task": task})}


def _fan_out(*calls: dict[str, str], req: dict[str, Any] | None = None
             ) -> tuple[Decision, dict[str, Any]]:
    """The lead's first model turn decides ``calls``: the decision that issues them."""
    req = req or new_request(agent="lead", conversation_id="parent", text="plan",
                             deadline_s=60)
    start = on_request(None, None, req, req["created_at_ms"], RULES, "t/0/1")
    [model] = _out(start, topic=INFERENCE_REQUESTS.name)
    assert "delegate" in [t["name"] for t in model["model_call"]["tools"]]
    return on_result(start.conversation, _result(model, calls=list(calls)),
                     req["created_at_ms"] + 10, RULES), req


def _answer_child(child: dict[str, Any], text: str, tokens: int) -> dict[str, Any]:
    """Run a child request through its own conversation: one model turn that answers."""
    now = child["created_at_ms"]
    start = on_request(None, None, child, now, RULES, "t/1/1")  # type: ignore[arg-type]
    [model] = _out(start, topic=INFERENCE_REQUESTS.name)
    done = on_result(start.conversation, _result(model, text, tokens=tokens), now + 5, RULES)
    [back] = _out(done, STEP_RESULT, RESULTS.name)
    return back


def test_a_fan_out_is_children_with_derived_ids_and_contracts_joined_with_summed_usage(
        ) -> None:
    decision, req = _fan_out(_delegate("a", "helper", "find x"),
                             _delegate("b", "helper", "find y"),
                             _delegate("c", "helper", "find z"))
    children = _out(decision, AGENT_REQUEST)
    assert len(children) == 3 and len({c["request_id"] for c in children}) == 3
    for child in children:
        assert child["parent_request_id"] == req["request_id"]
        assert child["conversation_id"].startswith("parent>helper-")
        assert (child["tenant_id"], child["user_id"], child["lane"], child["trace_id"]) == (
            req["tenant_id"], req["user_id"], req["lane"], req["trace_id"])
        assert child["created_at_ms"] < child["deadline_ms"] < req["deadline_ms"]
        assert child["delegation"]["depth"] == 1
        assert child["delegation"]["root_request_id"] == req["request_id"]
        # 80 % of what the lead has left (10,000 - 15 tokens), shared by three
        assert child["delegation"]["token_budget"] == int((10_000 - 15) * 0.8 / 3)
        step_id = child["parent_step_id"]
        assert delegation.child_ids(step_id, 1, "parent", "helper") == (
            child["request_id"], child["conversation_id"])  # a replay sends the same child
        assert delegation.child_ids(step_id, 2, "parent", "helper")[0] != child["request_id"]
    conv = decision.conversation
    results = [_answer_child(c, f"answer {i}", tokens=100) for i, c in enumerate(children)]
    assert {r["conversation_id"] for r in results} == {"parent"}
    for result in results[:2]:
        waiting = on_result(conv, result, T0, RULES)
        assert not _out(waiting, topic=INFERENCE_REQUESTS.name)  # joins when all are back
        conv = waiting.conversation
    joined = on_result(conv, results[2], T0, RULES)
    [again] = _out(joined, topic=INFERENCE_REQUESTS.name)
    tool_results = [m["content"] for m in again["model_call"]["messages"] if m["role"] == "tool"]
    assert tool_results == ["answer 0", "answer 1", "answer 2"]
    done = on_result(joined.conversation, _result(again, "all found"), T0 + 20, RULES)
    [answer] = _out(done, topic=ANSWERS.name)
    assert answer["status"] == "ok"
    assert answer["usage"]["prompt_tokens"] == 10 + 3 * 100 + 10  # the whole tree
    agents = [e for e in answer["timeline"] if e["step_type"] == "agent"]
    assert [(e["agent_status"], e["depth"]) for e in agents] == [("ok", 0)] * 3
    assert {e["request_id"] for e in agents} == {c["request_id"] for c in children}
    assert [e["depth"] for e in answer["timeline"]].count(1) == 3  # each child's model step


def test_past_the_width_and_depth_limits_a_delegation_is_a_tool_error() -> None:
    decision, _ = _fan_out(*[_delegate(f"w{i}", "helper", f"task {i}") for i in range(4)],
                           _delegate("x", "nobody", "t"), _delegate("e", "helper", " "))
    assert len(_out(decision, AGENT_REQUEST)) == 3  # max_fanout=3
    runs = decision.conversation["active"]["steps"]  # type: ignore[index]
    errors = {r["cmd"]["tool_call"]["call_id"]: r["output"] for r in runs if r["output"]}
    assert "fan-out limit reached" in errors["w3"]
    assert "unknown sub-agent 'nobody'" in errors["x"] and "empty" in errors["e"]
    # A lead below a lead: max_depth=1 holds for the whole tree, so its delegation is refused.
    decision, _ = _fan_out(_delegate("d", "lead", "plan more"))
    [child] = _out(decision, AGENT_REQUEST)
    deeper, _ = _fan_out(_delegate("dd", "helper", "too deep"), req=child)
    assert not _out(deeper, AGENT_REQUEST)
    [again] = _out(deeper, topic=INFERENCE_REQUESTS.name)  # the model reads why at once
    [refused] = [m["content"] for m in again["model_call"]["messages"] if m["role"] == "tool"]
    assert "depth limit reached" in refused


def test_a_failed_child_is_the_failed_step_whose_reason_the_model_reads() -> None:
    decision, _ = _fan_out(_delegate("a", "helper", "find x"))
    [child] = _out(decision, AGENT_REQUEST)
    now = child["created_at_ms"]
    start = on_request(None, None, child, now, RULES, "t/1/1")  # type: ignore[arg-type]
    [model] = _out(start, topic=INFERENCE_REQUESTS.name)
    bad = {"error_class": "InputRejected", "message": "the model refused the input",
           "retryable": False, "retry_after_ms": None, "infrastructure": False}
    failed = on_result(start.conversation, _result(model, error=bad), now + 5, RULES)
    [back] = _out(failed, STEP_RESULT, RESULTS.name)
    assert back["status"] == "error" and back["answer"]["status"] == "failed"
    parent = on_result(decision.conversation, back, now + 6, RULES)
    [again] = _out(parent, topic=INFERENCE_REQUESTS.name)
    [reason] = [m["content"] for m in again["model_call"]["messages"] if m["role"] == "tool"]
    assert "answered failed" in reason and "the model refused the input" in reason


def test_a_parent_past_its_deadline_cancels_its_children_who_stop_between_steps() -> None:
    decision, req = _fan_out(_delegate("a", "helper", "find x"),
                             _delegate("b", "helper", "find y"))
    children = _out(decision, AGENT_REQUEST)
    late = on_wakeup(decision.conversation, req["deadline_ms"] + 1, RULES)
    [answer] = _out(late, topic=ANSWERS.name)
    assert answer["status"] == "failed"
    cancels = _out(late, CANCEL)
    assert {c["request_id"] for c in cancels} == {c["request_id"] for c in children}
    assert all(c["by_request_id"] == req["request_id"] for c in cancels)
    statuses = [e["status"] for e in answer["timeline"] if e["step_type"] == "agent"]
    assert statuses == ["cancelled", "cancelled"]
    # The child, mid-step, finishes that step, issues nothing more and answers failed.
    child = children[0]
    now = child["created_at_ms"]
    start = on_request(None, None, child, now, RULES, "t/1/1")  # type: ignore[arg-type]
    [model] = _out(start, topic=INFERENCE_REQUESTS.name)
    cancelled = on_cancel(start.conversation, cancels[0], now + 1, RULES)  # type: ignore[arg-type]
    assert not _out(cancelled, topic=ANSWERS.name)  # its model step is still out
    done = on_result(cancelled.conversation,
                     _result(model, calls=[{"id": "n", "name": "note",
                                            "arguments_json": '{"text": "x"}'}]), now + 2, RULES)
    assert not _out(done, topic=INFERENCE_REQUESTS.name) and not _out(done, topic="tool.requests")
    [child_answer] = _out(done, topic=ANSWERS.name)
    assert child_answer["status"] == "failed" and "cancelled" in child_answer["reason"]
    # A cancel that comes before its request is kept for it.
    early = on_cancel(None, cancels[1], now, RULES)  # type: ignore[arg-type]
    refused = on_request(early.conversation, None, children[1], now + 1, RULES,  # type: ignore[arg-type]
                         "t/1/2")
    [second] = _out(refused, topic=ANSWERS.name)
    assert second["status"] == "failed" and not _out(refused, topic=INFERENCE_REQUESTS.name)


def test_the_registry_refuses_sub_agents_it_does_not_know() -> None:
    registry = Registry()
    registry.add(Agent(name="orphan", instructions="x", subagents=["ghost"]))
    with pytest.raises(RegistryError, match="unknown agent 'ghost'"):
        registry.check()


def test_a_declared_fan_out_with_a_quorum_of_one_takes_the_first_good_answer() -> None:
    req = new_request(agent="panel", conversation_id="panel", text="q", deadline_s=60)
    start = on_request(None, None, req, req["created_at_ms"], RULES, "t/0/1")
    first, second = _out(start, AGENT_REQUEST)
    assert (first["text"], second["text"]) == ("first", "second")
    back = _answer_child(second, "the second was quicker", tokens=7)
    decision = on_result(start.conversation, back, T0, RULES)
    [cancel] = _out(decision, CANCEL)
    assert cancel["request_id"] == first["request_id"]
    [model] = _out(decision, topic=INFERENCE_REQUESTS.name)  # the plan goes on
    prompt = " ".join(m["content"] for m in model["model_call"]["messages"])
    assert "[helper] the second was quicker" in prompt


def test_a_failed_child_is_retried_as_a_new_child_up_to_its_attempts() -> None:
    req = new_request(agent="retrier", conversation_id="retry", text="q", deadline_s=60)
    decision, _ = _fan_out(_delegate("a", "helper", "find x"), req=req)
    [first] = _out(decision, AGENT_REQUEST)
    now = first["created_at_ms"]
    start = on_request(None, None, first, now, RULES, "t/1/1")  # type: ignore[arg-type]
    [model] = _out(start, topic=INFERENCE_REQUESTS.name)
    down = {"error_class": "InputRejected", "message": "no", "retryable": False,
            "retry_after_ms": None, "infrastructure": False}
    [back] = _out(on_result(start.conversation, _result(model, error=down), now, RULES),
                  STEP_RESULT)
    waiting = on_result(decision.conversation, back, now + 1, RULES)
    assert not _out(waiting, AGENT_REQUEST) and not _out(waiting, topic=ANSWERS.name)
    retry_at = waiting.conversation["active"]["steps"][0]["retry_at_ms"]  # type: ignore[index]
    assert retry_at is not None
    retried = on_wakeup(waiting.conversation, retry_at, RULES)
    [second] = _out(retried, AGENT_REQUEST)
    assert second["request_id"] != first["request_id"]
    assert second["parent_step_id"] == first["parent_step_id"]
    assert second["delegation"]["parent_attempt"] == 2
    joined = on_result(retried.conversation, _answer_child(second, "found", 3), now + 2, RULES)
    [again] = _out(joined, topic=INFERENCE_REQUESTS.name)
    assert [m["content"] for m in again["model_call"]["messages"] if m["role"] == "tool"] == [
        "found"]
