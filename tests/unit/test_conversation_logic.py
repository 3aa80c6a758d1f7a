"""The coordinator's rules, without Kafka: redelivery is harmless, one request, one answer;
retries, budgets, deadlines, dead letters, redrive and compensation as decisions."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from clawstream.processors.conversation import (
    Decision,
    Rules,
    next_due_ms,
    on_request,
    on_result,
    on_wakeup,
)
from clawstream.processors.policy import Policy, retry_delay_ms
from clawstream.processors.registry import Registry, register_all
from clawstream.schemas import decode_as, encode
from clawstream.schemas.names import AGENT_ANSWER, AGENT_REQUEST, DEAD_LETTER
from clawstream.streams.publisher import new_request
from clawstream.streams.topics import ANSWERS, DLQ, EVENTS, INFERENCE_REQUESTS, TOOL_REQUESTS

POLICY = Policy(interactive_step_ms=1000, retry_base_ms=100, retry_cap_ms=1000)
RULES = Rules(POLICY, register_all(Registry(), ["clawstream.processors.builtin",
                                                 "fixtures.faults"]))


def _result(cmd: dict[str, Any], output: str, status: str = "ok", *, retryable: bool = False,
            retry_after_ms: int | None = None) -> dict[str, Any]:
    return {
        "step_id": cmd["step_id"], "step_index": cmd["step_index"],
        "step_type": cmd["step_type"], "attempt": cmd["attempt"],
        "request_id": cmd["request_id"], "conversation_id": cmd["conversation_id"],
        "trace_id": cmd["trace_id"], "status": status, "output": output,
        "error": None if status == "ok" else {"error_class": "X", "message": "boom",
                                              "retryable": retryable,
                                              "retry_after_ms": retry_after_ms},
        "worker": "w", "issued_at_ms": cmd["issued_at_ms"], "started_at_ms": 10,
        "finished_at_ms": 20, "cache_hit": False, "model": "m", "backend": "b",
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "cost_usd": 0.0,
                  "saved_tokens": 0, "saved_cost_usd": 0.0}, "cache": [],
        "tool_calls": [], "finish_reason": None,
    }


def _commands(decision: Decision) -> list[dict[str, Any]]:
    return [o.record for o in decision.outputs
            if o.topic in (INFERENCE_REQUESTS.name, TOOL_REQUESTS.name)]


def _one(decision: Decision, topic: str) -> dict[str, Any]:
    [record] = [o.record for o in decision.outputs if o.topic == topic]
    return record


def _events(decision: Decision) -> list[str]:
    return [o.record["event_type"] for o in decision.outputs if o.topic == EVENTS.name]


def _run_turn(conv: Any, text: str, answer: str) -> tuple[Any, dict[str, Any], Decision]:
    req = new_request(agent="researcher", conversation_id="c", text=text)
    decision = on_request(conv, None, req, 0, RULES)
    hits = json.dumps([{"doc": "d", "score": 1.0, "text": "a note"}])
    decision = on_result(decision.conversation, _result(_commands(decision)[0], hits), 1, RULES)
    model_cmd = _commands(decision)[0]
    decision = on_result(decision.conversation, _result(model_cmd, answer), 2, RULES)
    return decision.conversation, model_cmd, decision


def test_two_turns_carry_the_first_exchange_into_the_prompt() -> None:
    conv, _, _ = _run_turn(None, "first question", "first answer")
    conv, model_cmd, decision = _run_turn(conv, "second question", "second answer")
    contents = [m["content"] for m in model_cmd["model_call"]["messages"]]
    assert contents[1:3] == ["first question", "first answer"]
    assert "a note" in contents[-1]
    answer = _one(decision, ANSWERS.name)
    assert answer["text"] == "second answer"
    assert [e["step_type"] for e in answer["timeline"]] == ["tool", "model"]
    assert answer["usage"]["prompt_tokens"] == 6
    assert next_due_ms(conv, RULES) is None  # idle: nothing for the sweep to do
    encode(AGENT_ANSWER, answer)  # fits the schema


def test_a_redelivered_result_is_ignored_not_answered_twice() -> None:
    req = new_request(agent="chat", conversation_id="c", text="hi")
    decision = on_request(None, None, req, 0, RULES)
    cmd = _commands(decision)[0]
    decision = on_result(decision.conversation, _result(cmd, "hello"), 1, RULES)
    assert sum(o.topic == ANSWERS.name for o in decision.outputs) == 1
    again = on_result(decision.conversation, _result(cmd, "hello"), 2, RULES)
    assert not any(o.topic == ANSWERS.name for o in again.outputs)
    assert _events(again) == ["step_ignored"]


def test_a_redelivered_request_reissues_its_pending_step_a_duplicate_does_not() -> None:
    req = new_request(agent="chat", conversation_id="c", text="hi")
    first = on_request(None, None, req, 0, RULES, source="agent.requests.interactive/0/7")
    again = on_request(first.conversation, first.dedup, req, 1, RULES,
                       source="agent.requests.interactive/0/7")
    assert _events(again) == ["request_duplicate"]
    assert [c["step_id"] for c in _commands(again)] == [_commands(first)[0]["step_id"]]
    # the same request published again (another record): no second run of the step
    for n in range(50):
        dup = on_request(again.conversation, again.dedup, req, 2 + n, RULES,
                         source=f"agent.requests.interactive/0/{8 + n}")
        assert _events(dup) == ["request_duplicate"] and not _commands(dup)
        retry = {**req, "request_id": f"retry-{n}"}  # a client retry: same key and content
        dup = on_request(again.conversation, again.dedup, retry, 2 + n, RULES,
                         source=f"agent.requests.interactive/1/{n}")
        assert _events(dup) == ["request_duplicate"] and not _commands(dup)


def test_unknown_agent_is_rejected() -> None:
    rejected = on_request(None, None, new_request(agent="nobody", conversation_id="c",
                                                  text="hi"), 0, RULES)
    answer = _one(rejected, ANSWERS.name)
    assert answer["status"] == "rejected" and "unknown agent" in answer["reason"]


def test_a_non_retryable_failure_is_dead_lettered_with_its_history_and_answered() -> None:
    req = new_request(agent="chat", conversation_id="c", text="hi", tenant_id="t1")
    decision = on_request(None, None, req, 0, RULES)
    cmd = _commands(decision)[0]
    decision = on_result(decision.conversation, _result(cmd, "", "error"), 5, RULES)
    answer = _one(decision, ANSWERS.name)
    letter = _one(decision, DLQ.name)
    assert answer["status"] == "failed" and letter["dlq_id"] in answer["reason"]
    assert letter["attempts"] == [{"attempt": 1, "at_ms": 5, "error": "X: boom"}]
    assert (letter["tenant_id"], letter["conversation_id"], letter["request_id"],
            letter["step_id"]) == ("t1", "c", req["request_id"], cmd["step_id"])
    assert json.loads(letter["parameters_json"])["messages"][-1]["content"] == "hi"
    assert letter["prompt_signature"] and letter["error_class"] == "X"
    redrive = decode_as(AGENT_REQUEST, letter["payload"])
    assert redrive["options"]["redrive_of"] == letter["dlq_id"]
    encode(DEAD_LETTER, letter)


def _retrying_chat(retry_after_ms: int | None = None) -> tuple[Decision, dict[str, Any]]:
    req = new_request(agent="chat", conversation_id="c", text="hi")
    decision = on_request(None, None, req, 0, RULES)
    cmd = _commands(decision)[0]
    failed = _result(cmd, "", "error", retryable=True, retry_after_ms=retry_after_ms)
    return on_result(decision.conversation, failed, 100, RULES), cmd


def test_a_retryable_failure_is_retried_when_due_and_not_before() -> None:
    decision, cmd = _retrying_chat(retry_after_ms=300)
    [scheduled] = [o.record for o in decision.outputs if o.topic == EVENTS.name
                   and o.record["event_type"] == "retry_scheduled"]
    delay = int(scheduled["detail"]["delay_ms"])
    assert 300 <= delay <= 300 + POLICY.retry_base_ms
    assert not any(o.topic == ANSWERS.name for o in decision.outputs)
    assert next_due_ms(decision.conversation, RULES) == 100 + delay
    early = on_wakeup(decision.conversation, 100 + delay - 1, RULES)
    assert _commands(early) == []
    # A repeat of the failed attempt's result while the retry waits changes nothing.
    repeat = on_result(early.conversation, _result(cmd, "late"), 150, RULES)
    assert _events(repeat) == ["step_ignored"]
    due = on_wakeup(repeat.conversation, 100 + delay, RULES)
    [retry] = _commands(due)
    assert (retry["step_id"], retry["attempt"]) == (cmd["step_id"], 2)


def test_attempts_run_out_into_the_dlq_with_every_attempt() -> None:
    decision, _ = _retrying_chat()
    now = 100  # the first attempt failed at 100
    for attempt in (2, 3):
        now = next_due_ms(decision.conversation, RULES) or 0
        decision = on_wakeup(decision.conversation, now, RULES)
        retry = _commands(decision)[0]
        assert retry["attempt"] == attempt
        failed = _result(retry, "", "error", retryable=True)
        decision = on_result(decision.conversation, failed, now + 1, RULES)
    letter = _one(decision, DLQ.name)
    assert [a["attempt"] for a in letter["attempts"]] == [1, 2, 3]
    assert _one(decision, ANSWERS.name)["status"] == "failed"


def test_an_attempt_past_its_budget_is_given_up_and_its_late_result_ignored() -> None:
    req = new_request(agent="chat", conversation_id="c", text="hi")
    decision = on_request(None, None, req, 0, RULES)
    cmd = _commands(decision)[0]
    budget = POLICY.budget_ms(cmd["timeout_ms"])
    assert next_due_ms(decision.conversation, RULES) == budget
    decision = on_wakeup(decision.conversation, budget, RULES)
    assert "step_timed_out" in _events(decision) and "retry_scheduled" in _events(decision)
    decision = on_wakeup(decision.conversation, next_due_ms(decision.conversation, RULES)
                         or 0, RULES)
    retry = _commands(decision)[0]
    late = on_result(decision.conversation, _result(cmd, "late answer"), budget + 500, RULES)
    assert _events(late) == ["step_ignored"]
    done = on_result(late.conversation, _result(retry, "fresh answer"), budget + 600, RULES)
    assert _one(done, ANSWERS.name)["text"] == "fresh answer"


def test_a_request_past_its_deadline_is_answered_failed() -> None:
    req = new_request(agent="chat", conversation_id="c", text="hi", deadline_s=0.5)
    queued = new_request(agent="chat", conversation_id="c", text="next", deadline_s=0.5)
    decision = on_request(None, None, req, req["created_at_ms"], RULES)
    decision = on_request(decision.conversation, None, queued, req["created_at_ms"], RULES)
    decision = on_wakeup(decision.conversation, req["deadline_ms"] + 1, RULES)
    answers = [o.record for o in decision.outputs if o.topic == ANSWERS.name]
    assert {a["request_id"] for a in answers} == {req["request_id"], queued["request_id"]}
    assert all(a["status"] == "failed" and "deadline" in a["reason"] for a in answers)
    assert decision.conversation["active"] is None


def test_a_failed_saga_compensates_completed_steps_last_first() -> None:
    args = {f"args{i}": json.dumps({"counter": "c", "label": f"step{i}"}) for i in (0, 1)}
    args["args2"] = json.dumps({"retryable": False})
    req = new_request(agent="fault-saga", conversation_id="c", text="book", options=args)
    decision = on_request(None, None, req, 0, RULES)
    assert "draft_recorded" in _events(decision)
    for _ in range(2):
        cmd = _commands(decision)[0]
        decision = on_result(decision.conversation, _result(cmd, f"did {cmd['step_index']}"),
                             1, RULES)
    cmd = _commands(decision)[0]
    decision = on_result(decision.conversation, _result(cmd, "", "error"), 2, RULES)
    undone = []
    while not any(o.topic == ANSWERS.name for o in decision.outputs):
        [comp] = _commands(decision)
        arguments = json.loads(comp["tool_call"]["arguments_json"])
        assert comp["tool_call"]["name"] == "fault_undo" and comp["tool_call"]["mutating"]
        undone.append(arguments["arguments"]["label"])
        decision = on_result(decision.conversation, _result(comp, "undone"), 3, RULES)
    assert undone == ["step1", "step0"]
    assert _one(decision, ANSWERS.name)["status"] == "failed"


def test_a_redrive_runs_a_failed_request_again_once() -> None:
    req = new_request(agent="chat", conversation_id="c", text="hi")
    first = on_request(None, None, req, 0, RULES)
    failed = on_result(first.conversation, _result(_commands(first)[0], "", "error"), 1, RULES)
    letter = _one(failed, DLQ.name)
    dedup = {**(first.dedup or {}), "status": "answered", "answer_status": "failed"}
    redrive = decode_as(AGENT_REQUEST, letter["payload"])
    again = on_request(failed.conversation, dedup, redrive, 2, RULES)
    assert _events(again)[0] == "request_redriven"
    [cmd] = _commands(again)
    assert cmd["step_id"] != _commands(first)[0]["step_id"]  # a new run, new step keys
    done = on_result(again.conversation, _result(cmd, "hello"), 3, RULES)
    assert _one(done, ANSWERS.name)["status"] == "ok"
    answered = {**(again.dedup or {}), "status": "answered", "answer_status": "ok"}
    twice = on_request(done.conversation, answered, redrive, 4, RULES)
    assert _events(twice) == ["request_duplicate"] and _commands(twice) == []


@given(attempt=st.integers(1, 12), retry_after=st.one_of(st.none(), st.integers(0, 5000)),
       step_id=st.text(min_size=1, max_size=20))
def test_backoff_is_full_jitter_under_a_doubling_capped_ceiling(
        attempt: int, retry_after: int | None, step_id: str) -> None:
    delay, ceiling = retry_delay_ms(POLICY, step_id, attempt, retry_after)
    assert ceiling == min(POLICY.retry_cap_ms, POLICY.retry_base_ms * 2 ** (attempt - 1))
    assert (retry_after or 0) <= delay <= (retry_after or 0) + ceiling
    assert retry_delay_ms(POLICY, step_id, attempt, retry_after) == (delay, ceiling)
