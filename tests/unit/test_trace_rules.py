"""A timeline built from a conversation's records: order, retries, and steps in flight."""

from __future__ import annotations

from typing import Any

from clawstream.processors.records import event
from clawstream.schemas.names import AGENT_EVENT, AGENT_REQUEST, STEP_RESULT
from clawstream.schemas.records import empty_usage
from clawstream.streams.publisher import new_request
from clawstream.streams.trace import Found, build


def _found(schema: str, record: Any) -> Found:
    return Found("t", 0, 0, 0, schema, record)


def test_a_retried_step_still_running_shows_as_in_flight_after_its_failed_attempt() -> None:
    req = new_request(agent="researcher", conversation_id="c1", text="hi", deadline_s=20)
    other = new_request(agent="chat", conversation_id="c1", text="other", deadline_s=20)
    t0 = req["created_at_ms"]
    subject: Any = {"conversation_id": "c1", "request_id": req["request_id"],
                    "trace_id": req["trace_id"], "agent": "researcher"}

    def issued(attempt: int, at: int) -> Found:
        out = event("step_issued", t0 + at, subject, step_id="s1",
                    detail={"step_type": "tool", "name": "search", "attempt": attempt})
        return _found(AGENT_EVENT, out.record)

    failed: Any = {"step_id": "s1", "step_type": "tool", "attempt": 1, "status": "error",
                   "request_id": req["request_id"], "worker": "w0",
                   "issued_at_ms": t0 + 5, "started_at_ms": t0 + 7, "finished_at_ms": t0 + 30,
                   "cache_hit": False, "usage": empty_usage(),
                   "error": {"error_class": "ToolError", "message": "boom"}}
    retry = event("retry_scheduled", t0 + 31, subject, step_id="s1",
                  detail={"failed_attempt": 1, "delay_ms": 200})
    records = [_found(AGENT_REQUEST, req), _found(AGENT_REQUEST, other), issued(1, 5),
               _found(STEP_RESULT, failed), _found(AGENT_EVENT, retry.record), issued(2, 240)]

    trace = build(records, req["request_id"])
    assert [e.what for e in trace.entries] == ["request", "step_issued", "tool result",
                                               "retry_scheduled", "step_issued"]
    assert "ToolError: boom" in trace.entries[2].detail
    assert trace.in_flight == [("s1", 2, "search")] and not trace.answered
    assert trace.requests == [req["request_id"]]
    assert len(build(records).requests) == 2  # the whole conversation
