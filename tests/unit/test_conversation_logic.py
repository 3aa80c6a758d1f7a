"""The coordinator's rules, without Kafka: redelivery is harmless, one request, one answer."""

from __future__ import annotations

import json
from typing import Any

from processors.conversation import on_request, on_result
from schemas import encode
from schemas.names import AGENT_ANSWER
from streams.publisher import new_request
from streams.topics import ANSWERS, INFERENCE_REQUESTS, TOOL_REQUESTS


def _result(cmd: dict[str, Any], output: str, status: str = "ok") -> dict[str, Any]:
    return {
        "step_id": cmd["step_id"], "step_index": cmd["step_index"],
        "step_type": cmd["step_type"], "attempt": cmd["attempt"],
        "request_id": cmd["request_id"], "conversation_id": cmd["conversation_id"],
        "trace_id": cmd["trace_id"], "status": status, "output": output,
        "error": None if status == "ok" else {"error_class": "X", "message": "boom",
                                              "retryable": False},
        "worker": "w", "issued_at_ms": cmd["issued_at_ms"], "started_at_ms": 10,
        "finished_at_ms": 20, "cache_hit": False, "model": "m", "backend": "b",
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "cost_usd": 0.0,
                  "saved_tokens": 0, "saved_cost_usd": 0.0},
    }


def _run_turn(conv: Any, text: str, answer: str) -> tuple[Any, list[Any]]:
    req = new_request(agent="researcher", conversation_id="c", text=text)
    decision = on_request(conv, None, req, 0, 1000)
    tool_cmd = next(o.record for o in decision.outputs if o.topic == TOOL_REQUESTS.name)
    hits = json.dumps([{"doc": "d", "score": 1.0, "text": "a note"}])
    conv, outputs, _ = on_result(decision.conversation, _result(tool_cmd, hits), 1, 1000)
    model_cmd = next(o.record for o in outputs if o.topic == INFERENCE_REQUESTS.name)
    conv, outputs, answered = on_result(conv, _result(model_cmd, answer), 2, 1000)
    assert answered is not None and answered["request_id"] == req["request_id"]
    return conv, [model_cmd, *outputs]


def test_two_turns_carry_the_first_exchange_into_the_prompt() -> None:
    conv, _ = _run_turn(None, "first question", "first answer")
    conv, outputs = _run_turn(conv, "second question", "second answer")
    contents = [m["content"] for m in outputs[0]["model_call"]["messages"]]
    assert contents[1:3] == ["first question", "first answer"]
    assert "a note" in contents[-1]
    answers = [o.record for o in outputs[1:] if o.topic == ANSWERS.name]
    assert len(answers) == 1 and answers[0]["text"] == "second answer"
    assert [e["step_type"] for e in answers[0]["timeline"]] == ["tool", "model"]
    assert answers[0]["usage"]["prompt_tokens"] == 6
    encode(AGENT_ANSWER, answers[0])  # fits the schema


def test_a_redelivered_result_is_ignored_not_answered_twice() -> None:
    req = new_request(agent="chat", conversation_id="c", text="hi")
    decision = on_request(None, None, req, 0, 1000)
    cmd = next(o.record for o in decision.outputs if o.topic == INFERENCE_REQUESTS.name)
    conv, outputs, _ = on_result(decision.conversation, _result(cmd, "hello"), 1, 1000)
    assert sum(o.topic == ANSWERS.name for o in outputs) == 1
    conv, outputs, answered = on_result(conv, _result(cmd, "hello"), 2, 1000)
    assert answered is None and not any(o.topic == ANSWERS.name for o in outputs)
    assert outputs[0].record["event_type"] == "step_ignored"


def test_a_redelivered_request_reissues_its_pending_step_only() -> None:
    req = new_request(agent="chat", conversation_id="c", text="hi")
    first = on_request(None, None, req, 0, 1000)
    again = on_request(first.conversation, first.dedup, req, 1, 1000)
    kinds = [o.record.get("event_type") for o in again.outputs]
    assert kinds[0] == "request_duplicate"
    reissued = [o.record for o in again.outputs if o.topic == INFERENCE_REQUESTS.name]
    assert len(reissued) == 1 and reissued[0]["step_id"] == first.conversation[
        "active"]["pending"]["step_id"]


def test_failed_step_answers_failed_with_reason_and_unknown_agent_is_rejected() -> None:
    req = new_request(agent="chat", conversation_id="c", text="hi")
    decision = on_request(None, None, req, 0, 1000)
    cmd = next(o.record for o in decision.outputs if o.topic == INFERENCE_REQUESTS.name)
    _, outputs, _ = on_result(decision.conversation, _result(cmd, "", "error"), 1, 1000)
    answer = next(o.record for o in outputs if o.topic == ANSWERS.name)
    assert answer["status"] == "failed" and "boom" in answer["reason"]
    bad = new_request(agent="nobody", conversation_id="c", text="hi")
    rejected = on_request(None, None, bad, 0, 1000)
    answer = next(o.record for o in rejected.outputs if o.topic == ANSWERS.name)
    assert answer["status"] == "rejected" and "unknown agent" in answer["reason"]
