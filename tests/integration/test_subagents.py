"""Sub-agents on the real stack (issue 15): a planner's model delegates (the ``delegate``
function) to researchers, each a child request run by its own conversation's coordinator,
joined by the parent; limits and a failing child come back to the model as tool errors;
a parent that fails cancels its running child and compensates the effects it had; a slow
child is cut inside its parent's deadline; a worker SIGKILL in the middle of a fan-out
answers every child and the parent once."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from clawstream.config import Settings
from clawstream.deploy.local import worker as worker_proc
from clawstream.streams.topics import ANSWERS, INFERENCE_REQUESTS, delegation_topic
from fixtures import faults
from tests.integration.flow import (
    answer_to,
    ask,
    await_push,
    events_of,
    has_event,
    records_of,
    redis_client,
    script,
    script_marker,
    send,
)

pytestmark = pytest.mark.integration

PLANNER, RESEARCHER, HELPDESK = "team-planner", "team-researcher", "team-helpdesk"
# How late past a deadline an answer may come: the coordinator sweeps for due deadlines
# every 0.25 s; the rest is room for a loaded machine.
DEADLINE_SLACK_MS = 2000


def _delegate(agent: str, task: str) -> dict[str, Any]:
    return {"name": "delegate", "arguments": {"agent": agent, "task": task}}


def _tool_messages(settings: Settings, conversation: str, turn: int) -> list[str]:
    prompts = records_of(settings, INFERENCE_REQUESTS.name, conversation)
    return [m["content"] for m in prompts[turn]["model_call"]["messages"]
            if m["role"] == "tool"]


def _researchers(settings: Settings, count: int, delay_ms: float = 0) -> list[str]:
    """``count`` scripted researchers: each answers ``fact i`` after ``delay_ms``; their
    markers, which the planner puts in the tasks it hands them."""
    markers = [script_marker() for _ in range(count)]
    for i, marker in enumerate(markers):
        script(settings, marker, {"text": f"fact {i}", "delay_ms": delay_ms})
    return markers


def _children(answer: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in answer["timeline"] if e["step_type"] == "agent" and e["depth"] == 0]


def _answers_of(settings: Settings, conversation: str) -> list[dict[str, Any]]:
    """A child's answers (read after its parent's: a parent answers after its children)."""
    return records_of(settings, ANSWERS.name, conversation)


def test_a_fan_out_to_three_runs_them_concurrently_and_joins_with_the_trees_usage(
        worker: Settings) -> None:
    marker, conversation = script_marker(), f"fan-{uuid.uuid4().hex[:8]}"
    children = _researchers(worker, 3, delay_ms=1500)
    script(worker, marker,
            {"tool_calls": [_delegate(RESEARCHER, f"question {i} {m}")
                            for i, m in enumerate(children)]},
            {"text": "joined"})
    answer = ask(worker, agent=PLANNER, conversation_id=conversation, text=f"plan {marker}")
    assert (answer["status"], answer["text"]) == ("ok", "joined"), answer["reason"]
    assert _tool_messages(worker, conversation, 1) == ["fact 0", "fact 1", "fact 2"]
    delegations = _children(answer)
    assert [(e["status"], e["agent_status"]) for e in delegations] == [("ok", "ok")] * 3
    assert len({e["request_id"] for e in delegations}) == 3
    # The children's model steps (depth 1 in the parent's timeline) ran at the same time.
    runs = [e for e in answer["timeline"] if e["depth"] == 1 and e["step_type"] == "model"]
    assert len(runs) == 3
    starts = [e["issued_at_ms"] + e["queue_wait_ms"] for e in runs]
    ends = [s + e["run_ms"] for s, e in zip(starts, runs, strict=True)]
    assert all(e["run_ms"] >= 1400 for e in runs)
    assert max(starts) < min(ends), "the three children did not overlap"
    # Each child answered once, by its own coordinator; the parent's usage sums the tree.
    child_usage, texts = 0, set()
    for entry in delegations:  # in the order they came back
        [child] = _answers_of(worker, entry["conversation_id"])
        assert child["parent_request_id"] == answer["request_id"] and child["status"] == "ok"
        assert child["usage"] == entry["usage"]
        texts.add(child["text"])
        child_usage += child["usage"]["prompt_tokens"] + child["usage"]["completion_tokens"]
    assert texts == {"fact 0", "fact 1", "fact 2"}
    own = sum(e["usage"]["prompt_tokens"] + e["usage"]["completion_tokens"]
              for e in answer["timeline"] if e["depth"] == 0 and e["step_type"] == "model")
    usage = answer["usage"]
    assert child_usage > 0 and usage["prompt_tokens"] + usage["completion_tokens"] == (
        own + child_usage)


def test_past_the_depth_and_width_limits_the_model_reads_a_clear_error(
        worker: Settings) -> None:
    marker, sub, conversation = script_marker(), script_marker(), f"lim-{uuid.uuid4().hex[:8]}"
    children = _researchers(worker, 4)
    # The planner asks for 5 sub-agents (its max_fanout is 4): another planner and four
    # researchers; the other planner (depth 1, the limit) tries to delegate once more.
    script(worker, marker,
            {"tool_calls": [_delegate(PLANNER, f"plan deeper {sub}"),
                            *[_delegate(RESEARCHER, f"q {m}") for m in children]]},
            {"text": "limits seen"})
    deep = _researchers(worker, 1)[0]
    script(worker, sub, {"tool_calls": [_delegate(RESEARCHER, f"too deep {deep}")]},
            {"text": "could not go deeper"})
    answer = ask(worker, agent=PLANNER, conversation_id=conversation, text=f"plan {marker}")
    assert (answer["status"], answer["text"]) == ("ok", "limits seen"), answer["reason"]
    results = _tool_messages(worker, conversation, 1)
    assert results[:4] == ["could not go deeper", "fact 0", "fact 1", "fact 2"]
    assert "fan-out limit reached" in results[4] and "at most 4" in results[4]
    [planner] = [e for e in _children(answer) if e["name"] == PLANNER]
    [refused] = _tool_messages(worker, planner["conversation_id"], 1)
    assert "depth limit reached" in refused
    assert not [e for e in answer["timeline"] if e["depth"] >= 1 and e["step_type"] == "agent"]


def test_a_failing_child_is_a_failed_step_whose_reason_the_model_reads(
        worker: Settings) -> None:
    marker, bad, conversation = script_marker(), script_marker(), f"bad-{uuid.uuid4().hex[:8]}"
    script(worker, bad, {"text": "never", "error": {"status": 400}})
    script(worker, marker, {"tool_calls": [_delegate(RESEARCHER, f"fail {bad}")]},
            {"text": "the researcher failed"})
    answer = ask(worker, agent=PLANNER, conversation_id=conversation, text=f"plan {marker}")
    assert (answer["status"], answer["text"]) == ("ok", "the researcher failed")
    [entry] = _children(answer)
    assert (entry["status"], entry["agent_status"]) == ("error", "failed")
    [child] = _answers_of(worker, entry["conversation_id"])
    assert child["status"] == "failed"
    [reason] = _tool_messages(worker, conversation, 1)
    assert reason.startswith("error:") and "answered failed" in reason


def test_a_worker_sigkill_mid_fan_out_answers_every_child_and_the_parent_once(
        worker: Settings) -> None:
    marker, conversation = script_marker(), f"kill-{uuid.uuid4().hex[:8]}"
    children = _researchers(worker, 3, delay_ms=3000)
    script(worker, marker,
            {"tool_calls": [_delegate(RESEARCHER, f"q{i} {m}") for i, m in enumerate(children)]},
            {"text": "survived"})
    request = send(worker, agent=PLANNER, conversation_id=conversation, text=f"go {marker}")
    issued = events_of(worker, conversation,
                       until=has_event("step_issued", count=3, step_type="agent"))
    child_conversations = [e["detail"]["child_conversation_id"] for e in issued
                           if e["event_type"] == "step_issued"
                           and e["detail"]["step_type"] == "agent"]
    for child in child_conversations:  # every child runs its model step
        events_of(worker, child, until=has_event("step_issued", step_type="model"))
    assert worker_proc.kill(worker, 0)
    worker_proc.start(worker, 0)
    answer = answer_to(worker, request)
    assert (answer["status"], answer["text"]) == ("ok", "survived"), answer["reason"]
    assert {e["conversation_id"] for e in _children(answer)} == set(child_conversations)
    for child in child_conversations:
        answers = _answers_of(worker, child)
        assert len(answers) == 1 and answers[0]["status"] == "ok", answers
        requests = {e["request_id"] for e in events_of(worker, child)}
        assert len(requests) == 1  # no second child for a redelivered delegation
    assert len(records_of(worker, ANSWERS.name, conversation)) == 1


def test_a_parent_that_fails_cancels_its_running_child_which_stops_between_steps(
        worker: Settings) -> None:
    marker, slow, conversation = script_marker(), script_marker(), f"cxl-{uuid.uuid4().hex[:8]}"
    script(worker, slow, {"delay_ms": 5000, "tool_calls": [
        {"name": "shout", "arguments": {"text": "never"}}]}, {"text": "never either"})
    script(worker, marker, {"tool_calls": [
        _delegate(RESEARCHER, f"slow {slow}"),
        {"name": "fault_fail", "arguments": {"retryable": False, "message": "parent breaks"}}]})
    answer = ask(worker, agent=PLANNER, conversation_id=conversation, text=f"go {marker}")
    assert answer["status"] == "failed" and "parent breaks" in answer["reason"]
    [entry] = _children(answer)
    assert entry["status"] == "cancelled"
    [child] = records_of(worker, ANSWERS.name, entry["conversation_id"],
                         until=lambda found: bool(found))
    assert child["status"] == "failed" and "cancelled" in child["reason"]
    # Its model step in flight finished (if it had started); the tool it asked for never ran.
    assert [e["step_type"] for e in child["timeline"]] in ([], ["model"])
    assert has_event("request_cancelled")(events_of(worker, entry["conversation_id"]))


def test_a_slow_child_is_cut_inside_its_parents_deadline_and_the_parent_answers_once(
        worker: Settings) -> None:
    marker, slow, conversation = script_marker(), script_marker(), f"ddl-{uuid.uuid4().hex[:8]}"
    delay_ms = 15_000  # the child's model turn: longer than all the parent has
    script(worker, slow, {"text": "too late", "delay_ms": delay_ms})
    script(worker, marker, {"tool_calls": [_delegate(RESEARCHER, f"slow {slow}")]},
            {"text": "answered without the researcher"})
    request = send(worker, agent=PLANNER, conversation_id=conversation, text=f"go {marker}",
                   deadline_s=10)
    deadline = request["deadline_ms"]
    answer = answer_to(worker, request)
    assert answer["answered_at_ms"] <= deadline + DEADLINE_SLACK_MS
    [entry] = _children(answer)
    # The child request, as its coordinator read it: its deadline inside the parent's.
    [child_request] = records_of(worker, delegation_topic("interactive").name,
                                 entry["conversation_id"], until=lambda found: bool(found))
    assert child_request["parent_request_id"] == request["request_id"]
    assert child_request["created_at_ms"] < child_request["deadline_ms"] < deadline
    assert child_request["deadline_ms"] < child_request["created_at_ms"] + delay_ms
    # The child was cut at its own deadline, not when its slow turn came back.
    [child] = _answers_of(worker, entry["conversation_id"])
    assert (child["status"], child["reason_kind"]) == ("failed", "deadline"), child
    assert "deadline exceeded" in child["reason"]
    assert child_request["deadline_ms"] <= child["answered_at_ms"] <= (
        child_request["deadline_ms"] + DEADLINE_SLACK_MS)
    assert child["answered_at_ms"] <= deadline + DEADLINE_SLACK_MS
    assert (entry["status"], entry["agent_status"]) == ("error", "failed")
    # The parent had its reserve to use the failure: its model read it and answered, once.
    assert len(records_of(worker, ANSWERS.name, conversation)) == 1
    assert (answer["status"], answer["text"]) == ("ok", "answered without the researcher"), (
        answer["reason"])
    [reason] = _tool_messages(worker, conversation, 1)
    assert reason.startswith("error:") and "deadline exceeded" in reason


def test_a_parent_that_fails_cancels_its_child_and_compensates_the_childs_effects_once(
        worker: Settings) -> None:
    r = redis_client(worker)
    marker, desk, conversation = script_marker(), script_marker(), f"sag-{uuid.uuid4().hex[:8]}"
    counter = f"sub-saga-{uuid.uuid4().hex[:8]}"

    def effect(label: str, **more: Any) -> dict[str, Any]:
        return {"tool_calls": [{"name": "fault_effect",
                                "arguments": {"counter": counter, "label": label, **more}}]}

    # The helpdesk changes the outside world once, then again (held mid-call, the effect
    # applied), and would a third time if it went on.
    script(worker, desk, effect("first"), effect("second", hold=True), effect("orphan"),
           {"text": "never"})
    # The parent fails on its own: a tool that fails twice, the retry 8 s after the first
    # failure, long after the child has applied its effects.
    script(worker, marker, {"tool_calls": [
        _delegate(HELPDESK, f"book {desk}"),
        {"name": "fault_flaky", "arguments": {"fail_until_key": f"tool:never-{counter}",
                                              "retry_after_s": 8}}]})
    request = send(worker, agent=PLANNER, conversation_id=conversation, text=f"go {marker}")
    await_push(r, faults.STARTED_KEY.format(counter=counter))  # "second" is applied, held
    answer = answer_to(worker, request)
    assert answer["status"] == "failed" and "injected failure" in answer["reason"], answer
    [entry] = _children(answer)
    assert entry["status"] == "cancelled"
    child_conversation = entry["conversation_id"]
    events_of(worker, child_conversation, until=has_event("request_cancelled"))
    r.set(faults.RELEASE_KEY.format(counter=counter), "1")  # the step in flight finishes
    [child] = records_of(worker, ANSWERS.name, child_conversation,
                         until=lambda found: bool(found))
    assert child["status"] == "failed" and "cancelled" in child["reason"], child
    # Both effects undone, last first, each once; the third never ran.
    assert r.lrange(faults.UNDONE_KEY.format(counter=counter), 0, -1) == ["second", "first"]
    assert r.get(faults.EFFECTS_KEY.format(counter=counter)) == "0"
    assert r.get(faults.CALLS_KEY.format(counter=counter)) == "2"
    events = events_of(worker, child_conversation)
    kinds = [e["event_type"] for e in events]
    after = events[kinds.index("request_cancelled"):]
    issued = [e["detail"]["name"] for e in after if e["event_type"] == "step_issued"]
    assert issued == ["fault_undo", "fault_undo"], issued  # nothing but the saga
    assert kinds.count("compensation_completed") == 2
    assert kinds.count("answer_emitted") == 1
    assert len(records_of(worker, ANSWERS.name, conversation)) == 1
