"""Agents that decide, on the real stack (issue 12): a team's module loaded by a real
worker, the scripted model fixture deciding tool calls that run as steps and are joined,
bad arguments corrected by the model, limits, a mutating call applied once across a
worker SIGKILL."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from clawstream.config import Settings
from clawstream.deploy.local import worker as worker_proc
from clawstream.streams.topics import INFERENCE_REQUESTS, TOOL_REQUESTS
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


def _calls(*calls: tuple[str, dict[str, Any] | str]) -> dict[str, Any]:
    return {"tool_calls": [{"name": name, "arguments": args} for name, args in calls]}


def _decisions(settings: Settings, conversation: str) -> list[dict[str, Any]]:
    return [dict(e) for e in events_of(settings, conversation,
                                       until=has_event("answer_emitted"))
            if e["event_type"] == "decision"]


def test_a_teams_module_is_loaded_by_a_real_worker(worker: Settings) -> None:
    answer = ask(worker, agent="team-shouter", conversation_id=f"team-{uuid.uuid4().hex[:8]}",
                 text="hello")
    assert (answer["status"], answer["text"]) == ("ok", "HELLO HELLO")


def test_the_model_calls_two_tools_in_parallel_and_answers_with_their_results(
        worker: Settings) -> None:
    marker, conversation = script_marker(), f"loop-{uuid.uuid4().hex[:8]}"
    script(worker, marker, _calls(("shout", {"text": "left"}), ("shout", {"text": "right"})),
            {"text": "I shouted twice."})
    answer = ask(worker, agent="team-helpdesk", conversation_id=conversation,
                 text=f"shout left and right {marker}")
    assert (answer["status"], answer["text"]) == ("ok", "I shouted twice.")
    assert [e["step_type"] for e in answer["timeline"]] == ["model", "tool", "tool", "model"]
    decisions = _decisions(worker, conversation)
    assert [d["detail"]["kind"] for d in decisions] == ["tool_calls", "final"]
    assert decisions[0]["detail"]["tools"] == "shout,shout"
    tools = records_of(worker, TOOL_REQUESTS.name, conversation)
    assert {json.loads(t["tool_call"]["arguments_json"])["text"] for t in tools} == {
        "left", "right"}
    second = records_of(worker, INFERENCE_REQUESTS.name, conversation)[-1]
    results = [m["content"] for m in second["model_call"]["messages"] if m["role"] == "tool"]
    assert results == ["LEFT", "RIGHT"]  # in the order the model called them


def test_a_validation_error_goes_back_to_the_model_which_corrects_its_call(
        worker: Settings) -> None:
    marker, conversation = script_marker(), f"fix-{uuid.uuid4().hex[:8]}"
    script(worker, marker, _calls(("shout", {"times": "often"})),
            _calls(("shout", {"text": "fixed"})), {"text": "done"})
    answer = ask(worker, agent="team-helpdesk", conversation_id=conversation,
                 text=f"shout {marker}")
    assert (answer["status"], answer["text"]) == ("ok", "done")
    prompts = records_of(worker, INFERENCE_REQUESTS.name, conversation)
    feedback = [m["content"] for m in prompts[1]["model_call"]["messages"]
                if m["role"] == "tool"]
    assert len(feedback) == 1 and "invalid arguments for shout" in feedback[0]
    assert "text: Field required" in feedback[0]
    assert [e["status"] for e in answer["timeline"]] == ["ok", "error", "ok", "ok", "ok"]


def test_max_steps_ends_the_loop_degraded_with_what_the_agent_has(worker: Settings) -> None:
    marker = script_marker()
    # Each turn asks for something new (the same calls twice in a row end as a loop).
    loops = [_calls(("shout", {"text": f"again {turn}"})) for turn in range(5)]
    script(worker, marker, {**loops[0], "text": "still working"}, *loops[1:])
    answer = ask(worker, agent="team-helpdesk", conversation_id=f"max-{uuid.uuid4().hex[:8]}",
                 text=f"keep going {marker}")
    assert answer["status"] == "degraded" and "limit of 6 steps" in answer["reason"]
    assert answer["text"] == "still working"


def test_a_mutating_call_in_the_loop_is_applied_once_across_a_worker_sigkill(
        worker: Settings) -> None:
    r = redis_client(worker)
    marker, counter = script_marker(), f"loop-effect-{uuid.uuid4().hex[:8]}"
    script(worker, marker, _calls(("fault_effect", {"counter": counter, "hold": True})),
            {"text": "applied"})
    request = send(worker, agent="team-helpdesk",
                   conversation_id=f"kill-{uuid.uuid4().hex[:8]}", text=f"apply {marker}")
    await_push(r, faults.STARTED_KEY.format(counter=counter))
    assert worker_proc.kill(worker, 0)
    r.set(faults.RELEASE_KEY.format(counter=counter), "1")
    worker_proc.start(worker, 0)
    answer = answer_to(worker, request)
    assert (answer["status"], answer["text"]) == ("ok", "applied")
    assert r.get(faults.EFFECTS_KEY.format(counter=counter)) == "1"
