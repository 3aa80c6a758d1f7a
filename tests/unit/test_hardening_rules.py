"""The coordinator's rules against the outside acceptance run's defects (issue 11): bad
input is refused naming the field, a plan that raises fails its request with an answer, a
key reused for other content is refused, duplicates run nothing again and their spend is
counted, our infrastructure's failures never use a step's attempts, state stays bounded."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clawstream.processors.conversation import (
    Decision,
    Rules,
    abort,
    hard_abort,
    keep_within,
    on_request,
    on_result,
    on_wakeup,
    refuse_unprocessable,
)
from clawstream.processors.policy import Policy
from clawstream.processors.registry import Registry, register_all
from clawstream.processors.validation import option_problem
from clawstream.schemas import encode
from clawstream.schemas.names import AGENT_ANSWER, AGENT_EVENT, DEAD_LETTER, STEP_COMMAND
from clawstream.streams.publisher import new_request
from clawstream.streams.topics import ANSWERS, DLQ, EVENTS, INFERENCE_REQUESTS, TOOL_REQUESTS

POLICY = Policy(interactive_step_ms=1000, retry_base_ms=100, retry_cap_ms=1000,
                context_exchanges=3, context_exchange_chars=200, max_request_chars=5000)
RULES = Rules(POLICY, register_all(Registry(), ["clawstream.processors.builtin",
                                                 "fixtures.faults"]))
SOURCE = "agent.requests.interactive/0/1"


def _commands(decision: Decision) -> list[dict[str, Any]]:
    return [dict(o.record) for o in decision.outputs
            if o.topic in (INFERENCE_REQUESTS.name, TOOL_REQUESTS.name)]


def _answers(decision: Decision) -> list[dict[str, Any]]:
    return [dict(o.record) for o in decision.outputs if o.topic == ANSWERS.name]


def _events(decision: Decision) -> list[dict[str, Any]]:
    return [dict(o.record) for o in decision.outputs if o.topic == EVENTS.name]


def _result(cmd: dict[str, Any], output: str = "ok", *, error: dict[str, Any] | None = None,
            tokens: int = 3) -> Any:
    return {
        "step_id": cmd["step_id"], "step_index": cmd["step_index"],
        "step_type": cmd["step_type"], "attempt": cmd["attempt"],
        "request_id": cmd["request_id"], "conversation_id": cmd["conversation_id"],
        "trace_id": cmd["trace_id"], "status": "error" if error else "ok", "output": output,
        "error": error, "worker": "w", "issued_at_ms": cmd["issued_at_ms"],
        "started_at_ms": 10, "finished_at_ms": 20, "cache_hit": False, "model": "m",
        "backend": "b", "usage": {"prompt_tokens": tokens, "completion_tokens": 2,
                                  "cost_usd": 0.001, "saved_tokens": 0,
                                  "saved_cost_usd": 0.0}, "cache": [],
        "tool_calls": [], "finish_reason": None}


def _error(cls: str, *, infrastructure: bool = False, retryable: bool = True) -> dict[str, Any]:
    return {"error_class": cls, "message": "down", "retryable": retryable,
            "retry_after_ms": None, "infrastructure": infrastructure}


def _rejected(decision: Decision) -> str:
    [answer] = _answers(decision)
    assert answer["status"] == "rejected"
    encode(AGENT_ANSWER, answer)
    return str(answer["reason"])


@pytest.mark.parametrize(("fields", "says"), [
    ({"conversation_id": ""}, "field conversation_id is empty"),
    ({"conversation_id": "   "}, "field conversation_id is empty"),
    ({"text": " \n "}, "field text is empty"),
    ({"tenant_id": ""}, "field tenant_id is empty"),
    ({"idempotency_key": ""}, "field idempotency_key is empty"),
    ({"agent": ""}, "field agent is empty"),
    ({"text": "x" * 5001}, "5001 characters, over the limit of 5000"),
    ({"options": {"max_steps": "-5"}}, "option max_steps must be a positive integer"),
    ({"options": {"token_budget": "nan"}}, "option token_budget must be a positive integer"),
    ({"options": {"max_cache_age_s": "NaN"}}, "option max_cache_age_s must be a number"),
    ({"options": {"no-cache": "maybe"}}, "option no-cache must be true or false"),
    ({"options": {"run": "3"}}, "option run is reserved"),
])
def test_bad_input_is_rejected_naming_the_field(fields: dict[str, Any], says: str) -> None:
    req: Any = {**new_request(agent="chat", conversation_id="c", text="hi"), **fields}
    decision = on_request(None, None, req, 0, RULES, SOURCE)
    assert says in _rejected(decision)
    assert not _commands(decision) and decision.conversation is None
    assert decision.dedup and decision.dedup["answer_status"] == "rejected"


@given(st.dictionaries(st.sampled_from(["max_steps", "token_budget", "max_cache_age_s",
                                        "no-cache", "k"]), st.text(max_size=6)))
def test_options_are_accepted_or_refused_never_crash(options: dict[str, str]) -> None:
    problem = option_problem(options)
    assert problem is None or problem.startswith("option ")


def test_a_plan_that_raises_fails_its_request_with_an_answer_and_a_letter() -> None:
    req = new_request(agent="fault-effect", conversation_id="c", text="go",
                      options={"args0": "{not json"})
    decision = on_request(None, None, req, 0, RULES, SOURCE)
    [answer] = _answers(decision)
    [letter] = [o.record for o in decision.outputs if o.topic == DLQ.name]
    encode(DEAD_LETTER, letter)
    assert answer["status"] == "failed" and "JSONDecodeError" in answer["reason"]
    assert letter["dlq_id"] in answer["reason"]  # type: ignore[typeddict-item]
    assert decision.conversation and decision.conversation["active"] is None


def test_a_key_reused_for_other_content_is_refused_once() -> None:
    req = new_request(agent="chat", conversation_id="c", text="first question",
                      idempotency_key="k1")
    first = on_request(None, None, req, 0, RULES, SOURCE)
    other = {**new_request(agent="chat", conversation_id="c", text="another question",
                           idempotency_key="k1")}
    refused = on_request(first.conversation, first.dedup, other, 1, RULES,
                         "agent.requests.interactive/0/2")
    assert "idempotency key 'k1' was used for a different request" in _rejected(refused)
    assert refused.dedup and refused.dedup["request_id"] == req["request_id"]
    assert refused.dedup["status"] == "in_progress"  # the first request runs on
    again = on_request(refused.conversation, refused.dedup, other, 2, RULES,
                       "agent.requests.interactive/0/2")
    assert not _answers(again)  # the refused one, read again: no second answer
    retry = {**req, "request_id": "client-retry"}  # same key, same content: a duplicate
    dup = on_request(refused.conversation, refused.dedup, retry, 3, RULES, "x/0/9")
    assert not _answers(dup) and [e["event_type"] for e in _events(dup)] == [
        "request_duplicate"]


def test_duplicate_executions_are_counted_in_the_answer() -> None:
    req = new_request(agent="chat", conversation_id="c", text="hi")
    decision = on_request(None, None, req, 0, RULES, SOURCE)
    [cmd] = _commands(decision)
    early = on_result(decision.conversation, _result(cmd, "dup", tokens=50), 5, RULES)
    late = {**cmd, "attempt": 9}  # an attempt that is not pending
    ignored = on_result(early.conversation, _result(late, "x", tokens=7), 6, RULES)
    [event] = _events(ignored)
    assert event["event_type"] == "step_ignored"
    assert event["detail"]["prompt_tokens"] == "7" and event["detail"]["cost_usd"]
    [answer] = _answers(early)
    assert answer["usage"]["prompt_tokens"] == 50


def test_infrastructure_failures_retry_until_the_deadline_without_using_attempts() -> None:
    req = new_request(agent="fault-effect", conversation_id="c", text="go", deadline_s=60,
                      options={"args0": json.dumps({"counter": "c"})})
    decision = on_request(None, None, req, req["created_at_ms"], RULES, SOURCE)
    now = req["created_at_ms"]
    for _ in range(8):  # fault_effect has 3 attempts: far more infrastructure failures pass
        [cmd] = _commands(decision)
        now += 10
        decision = on_result(decision.conversation,
                             _result(cmd, error=_error("ConnectionError", infrastructure=True)),
                             now, RULES)
        assert not _answers(decision)
        [scheduled] = _events(decision)[-1:]
        assert scheduled["detail"]["infrastructure"] == "true"
        assert decision.conversation and decision.conversation["active"]
        now = decision.conversation["active"]["steps"][0]["retry_at_ms"] or now
        decision = on_wakeup(decision.conversation, now, RULES)
    [cmd] = _commands(decision)
    assert cmd["attempt"] == 9
    for _ in range(2):  # the tool's own failures still use its attempts
        decision = on_result(decision.conversation, _result(cmd, error=_error("ToolError")),
                             now, RULES)
        assert decision.conversation and decision.conversation["active"]
        now = decision.conversation["active"]["steps"][0]["retry_at_ms"] or now
        decision = on_wakeup(decision.conversation, now, RULES)
        [cmd] = _commands(decision)
    done = on_result(decision.conversation, _result(cmd, error=_error("ToolError")), now, RULES)
    [answer] = _answers(done)
    assert answer["status"] == "failed" and "after 11 attempt(s)" in answer["reason"]
    past = {**req, "request_id": "r2", "idempotency_key": "k2", "deadline_ms": now + 1}
    decision = on_request(None, None, past, now, RULES, SOURCE)
    [cmd] = _commands(decision)
    decision = on_result(decision.conversation,
                         _result(cmd, error=_error("RedisError", infrastructure=True)), now,
                         RULES)
    timed_out = on_wakeup(decision.conversation, now + 1, RULES)
    [answer] = _answers(timed_out)
    assert answer["status"] == "failed" and "deadline" in answer["reason"]


def test_state_stays_bounded_and_the_archive_keeps_everything() -> None:
    conv = None
    long_text = "word " * 400
    archived = []
    for turn in range(10):
        req = new_request(agent="chat", conversation_id="c", text=f"{turn} {long_text}",
                          idempotency_key=f"k{turn}")
        decision = on_request(conv, None, req, turn * 10, RULES, f"t/0/{turn}")
        [cmd] = _commands(decision)
        done = on_result(decision.conversation, _result(cmd, long_text), turn * 10 + 1, RULES)
        archived += done.archive
        conv = done.conversation
    assert conv is not None
    assert [ex["user"][:2] for ex in conv["exchanges"]] == ["7 ", "8 ", "9 "]
    assert all(len(ex["user"]) <= 206 and ex["user"].endswith("[...]")
               for ex in conv["exchanges"])
    assert len(archived) == 10 and archived[0][1]["user"] == f"0 {long_text}"


def test_abort_compensates_and_answers_and_hard_abort_answers_everyone() -> None:
    args = {"args0": json.dumps({"counter": "c", "label": "a"}),
            "args1": json.dumps({"counter": "c", "label": "b"}),
            "args2": json.dumps({"retryable": False})}
    req = new_request(agent="fault-saga", conversation_id="c", text="book", options=args)
    decision = on_request(None, None, req, 0, RULES, SOURCE)
    [cmd] = _commands(decision)
    decision = on_result(decision.conversation, _result(cmd, "did a"), 1, RULES)
    assert decision.conversation is not None
    aborted = abort(decision.conversation, "broken", 2, RULES)
    [undo] = _commands(aborted)
    assert undo["tool_call"]["name"] == "fault_undo"
    assert aborted.conversation and aborted.conversation["active"]
    assert aborted.conversation["active"]["request"]["text"] == ""
    finished = on_result(aborted.conversation, _result(undo, "undone"), 3, RULES)
    [answer] = _answers(finished)
    assert answer["status"] == "failed" and answer["reason"] == "broken"
    running = new_request(agent="chat", conversation_id="d", text="now")
    queued = new_request(agent="chat", conversation_id="d", text="next")
    state = on_request(None, None, running, 4, RULES, "t/0/5").conversation
    state = on_request(state, None, queued, 4, RULES, "t/0/6").conversation
    assert state is not None and len(state["waiting"]) == 1
    hard = hard_abort(state, "state lost", 5)
    assert {a["request_id"] for a in _answers(hard)} == {running["request_id"],
                                                         queued["request_id"]}
    assert hard.conversation and not hard.conversation["active"]
    assert not hard.conversation["waiting"]


def test_an_unprocessable_request_is_answered_and_recorded() -> None:
    req = new_request(agent="chat", conversation_id="c", text="hi")
    decision = refuse_unprocessable(req, "processing failed; dead letter d1", 3)
    [answer] = _answers(decision)
    assert answer["status"] == "failed" and "d1" in answer["reason"]
    assert decision.dedup and decision.dedup["answer_status"] == "failed"
    assert [o.schema for o in decision.outputs] == [AGENT_ANSWER, AGENT_EVENT]
    assert STEP_COMMAND not in [o.schema for o in decision.outputs]


def test_a_state_too_large_to_store_fails_its_request_instead() -> None:
    req = new_request(agent="chat", conversation_id="c", text="y" * 4000)
    decision = on_request(None, None, req, 0, RULES, SOURCE)
    assert keep_within(decision, 100_000, 1, RULES) is decision
    kept = keep_within(decision, 3000, 1, RULES)
    answers = _answers(kept)
    assert [a["status"] for a in answers] == ["failed"]
    assert "over the limit of 3000 (max_state_bytes)" in answers[0]["reason"]
    assert kept.conversation is not None and kept.conversation["active"] is None
    assert not _commands(kept)
