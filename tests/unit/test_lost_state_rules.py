"""A conversation's state and its request's dedup entry are two table writes, made after
the broker has the event's outputs; a worker crash can keep one and lose the other, or
both. The event's offset is committed only after both, so it is read again: these rules
make it end in one answer, sending again what the lost write had sent (resumed, or
recognised as a redelivery)."""

from __future__ import annotations

import copy
import json
from typing import Any

from clawstream.processors.conversation import (
    holds,
    on_request,
    on_result,
)
from clawstream.processors.state import empty_conversation
from clawstream.schemas import encode
from clawstream.schemas.names import AGENT_ANSWER
from clawstream.streams.publisher import new_request
from tests.unit.test_hardening_rules import RULES, SOURCE, _answers, _commands, _events, _result


def _started(text: str = "apply") -> tuple[Any, Any]:
    req = new_request(agent="fault-effect", conversation_id="c", text=text, deadline_s=30,
                      options={"args0": json.dumps({"counter": "c"})})
    return req, on_request(None, None, req, req["created_at_ms"], RULES, SOURCE)


def test_an_event_applied_again_to_the_state_before_it_sends_the_same_outputs_again() -> None:
    """The coordinator writes a state only after the broker has its outputs: a worker
    killed in between recovers the state before the event, reads the event again and must
    send what it sent (same step ids, the answer again), nothing new."""
    req, first = _started()
    again = on_request(None, None, req, req["created_at_ms"] + 10, RULES, SOURCE)
    assert [c["step_id"] for c in _commands(again)] == [c["step_id"] for c in _commands(first)]
    [cmd] = _commands(first)
    before = first.conversation  # the rules change a state in place: each gets a copy
    done = on_result(copy.deepcopy(before), _result(cmd), req["created_at_ms"] + 20, RULES)
    redone = on_result(copy.deepcopy(before), _result(cmd), req["created_at_ms"] + 30, RULES)
    [answer], [answer2] = _answers(done), _answers(redone)
    encode(AGENT_ANSWER, answer2)
    assert answer2["request_id"] == answer["request_id"]
    assert (answer2["status"], answer2["text"]) == (answer["status"], answer["text"])
    # once the state is written, the event read again is a redelivery: nothing is sent
    late = on_result(done.conversation, _result(cmd), req["created_at_ms"] + 40, RULES)
    assert not _answers(late) and not _commands(late)


def test_a_lost_result_of_a_lost_state_is_ignored_and_the_request_resumed_when_read_again(
        ) -> None:
    req, first = _started()
    [cmd] = _commands(first)
    for lost in (None, empty_conversation()):  # the conversation's write was lost
        ignored = on_result(lost, _result(cmd), req["created_at_ms"] + 5, RULES)
        assert [e["event_type"] for e in _events(ignored)] == ["step_ignored"]
        assert holds(first.conversation, req["request_id"]) and not holds(lost, req["request_id"])


def test_a_lost_request_read_again_is_resumed_with_the_same_steps() -> None:
    req, first = _started()
    [cmd] = _commands(first)
    again = on_request(None, first.dedup, req, req["created_at_ms"] + 10, RULES, SOURCE)
    assert [e["event_type"] for e in _events(again)][:1] == ["request_resumed"]
    [cmd2] = _commands(again)
    assert cmd2["step_id"] == cmd["step_id"] and cmd2["attempt"] == cmd["attempt"]
    assert holds(again.conversation, req["request_id"])
    done = on_result(again.conversation, _result(cmd), req["created_at_ms"] + 20, RULES)
    [answer] = _answers(done)  # the lost run's result completes the resumed run
    assert answer["status"] == "ok"


def test_a_redelivered_request_whose_dedup_entry_was_lost_does_not_run_twice() -> None:
    req, first = _started()
    again = on_request(first.conversation, None, req, req["created_at_ms"] + 10, RULES,
                       SOURCE)
    assert [e["event_type"] for e in _events(again)] == ["request_duplicate"]
    assert not _commands(again) and not _answers(again)
    assert again.conversation is not None and again.conversation["waiting"] == []
    assert again.dedup is not None and again.dedup["status"] == "in_progress"
