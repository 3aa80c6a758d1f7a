"""An answer's spans as the OTLP exporter encodes them, decoded with the OpenTelemetry
project's protobuf classes: one trace (the request's W3C id), a root per request, a child
per step attempt, the same ids when the answer is sent twice, no conversation text."""

from __future__ import annotations

from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource

from clawstream.processors.otlp import answer_spans
from clawstream.schemas.records import AgentAnswer, TimelineEntry, empty_usage
from clawstream.streams.tracecontext import w3c_trace_id


def _step(attempt: int, status: str, at_ms: int) -> TimelineEntry:
    return {"step_id": "s1", "step_type": "model", "name": "small", "status": status,
            "worker": "worker-0", "attempt": attempt, "issued_at_ms": at_ms,
            "queue_wait_ms": 5.0, "run_ms": 20.5, "result_wait_ms": 2.0, "cache_hit": False,
            "usage": {**empty_usage(), "prompt_tokens": 11, "completion_tokens": 7},
            "request_id": None, "conversation_id": None, "agent_status": None, "depth": 0}


def _answer(**over: Any) -> AgentAnswer:
    answer: dict[str, Any] = {
        "request_id": "r-1", "idempotency_key": "k", "conversation_id": "c-1",
        "tenant_id": "t", "trace_id": "not-w3c-trace", "agent": "assistant",
        "agent_version": "v1", "status": "failed", "text": "secret text",
        "reason": "mail ann@example.com failed", "reason_kind": "tool_failed",
        "retry_after_s": None, "created_at_ms": 1_000, "answered_at_ms": 1_200,
        "usage": empty_usage(), "timeline": [_step(1, "error", 1_010), _step(2, "ok", 1_100)],
        "cache": [], "tool_calls": [], "finish_reason": None, "parent_request_id": None,
        "parent_step_id": None, "delegation": None}
    answer.update(over)
    return answer  # type: ignore[return-value]


def _decode(answer: AgentAnswer) -> list[Any]:
    encoded = encode_spans(answer_spans(answer, Resource.create({"service.name": "w"})))
    request = ExportTraceServiceRequest.FromString(encoded.SerializeToString())
    return [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]


def test_a_request_and_its_step_attempts_form_one_trace() -> None:
    root, first, second = _decode(_answer())
    assert {s.trace_id.hex() for s in (root, first, second)} == {w3c_trace_id("not-w3c-trace")}
    assert not root.parent_span_id
    assert first.parent_span_id == second.parent_span_id == root.span_id
    assert (root.start_time_unix_nano, root.end_time_unix_nano) == (1_000_000_000, 1_200_000_000)
    assert first.start_time_unix_nano == 1_010_000_000
    assert first.end_time_unix_nano == 1_010_000_000 + 27_500_000  # queue + run + result back
    assert first.status.code == first.status.STATUS_CODE_ERROR
    assert second.status.code == second.status.STATUS_CODE_UNSET
    assert first.span_id != second.span_id
    assert root.status.message == "mail [email] failed"
    text = encode_spans(answer_spans(_answer(), Resource.create())).SerializeToString()
    assert b"secret text" not in text and b"ann@example.com" not in text


def test_an_answer_sent_twice_exports_the_same_span_ids() -> None:
    ids = [(s.trace_id, s.span_id) for s in _decode(_answer())]
    assert ids == [(s.trace_id, s.span_id) for s in _decode(_answer())]


def test_a_sub_agents_request_is_a_child_of_its_parent_request() -> None:
    parent_root = _decode(_answer())[0]
    child_root = _decode(_answer(request_id="r-2", parent_request_id="r-1"))[0]
    assert child_root.parent_span_id == parent_root.span_id
