"""OpenTelemetry spans of every answered request, exported over OTLP when an endpoint is set.

Why from the answer: the coordinator's answer already carries the request's whole story
with its times (created, answered, and per step attempt: issued, queue wait, run, result
back), so one place builds the trace after the fact, with the recorded times, instead of
live spans threaded through every hop and every process. The trace id is the request's
``trace_id`` as W3C writes it (the one in every record's ``traceparent`` header, a caller's
own when it sent one to the gateway), so a backend joins these spans to the caller's.

Span ids are derived from what a span is (the request; the request, step and attempt), so
an answer sent twice exports the same spans. A sub-agent's request is a child of its
parent request's span. No text of the conversation goes out: names, ids, times, statuses,
token counts, and the failure reason masked (``streams/masking.py``).

The export runs in the SDK's batch processor thread; a collector that is down costs
dropped spans (the SDK logs it), never a slower answer.
"""

from __future__ import annotations

import hashlib

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from clawstream.schemas.records import AgentAnswer, TimelineEntry
from clawstream.streams.masking import mask_text
from clawstream.streams.tracecontext import w3c_trace_id

SCOPE = InstrumentationScope("clawstream.coordinator")
TRACES_PATH = "/v1/traces"
_MS = 1_000_000  # ns per ms


def span_id(*parts: str) -> int:
    """A non-zero 64-bit span id derived from ``parts``."""
    value = int.from_bytes(hashlib.blake2b("/".join(parts).encode(), digest_size=8).digest())
    return value or 1


def _context(trace_id: int, span: int) -> SpanContext:
    return SpanContext(trace_id, span, is_remote=False, trace_flags=TraceFlags(1))


def _status(ok: bool, description: str | None = None) -> Status:
    return Status(StatusCode.UNSET) if ok else Status(StatusCode.ERROR, description)


def answer_spans(answer: AgentAnswer, resource: Resource) -> list[ReadableSpan]:
    """The request's span (created to answered) and one per step attempt of its timeline,
    children of it."""
    trace_id = int(w3c_trace_id(answer["trace_id"]), 16)
    root = _context(trace_id, span_id(answer["request_id"]))
    parent = (_context(trace_id, span_id(answer["parent_request_id"]))
              if answer["parent_request_id"] else None)
    ok = answer["status"] == "ok"
    usage = answer["usage"]
    spans = [ReadableSpan(
        name=f"request {answer['agent']}", context=root, parent=parent, resource=resource,
        kind=SpanKind.CONSUMER, instrumentation_scope=SCOPE,
        start_time=answer["created_at_ms"] * _MS,
        end_time=max(answer["answered_at_ms"], answer["created_at_ms"]) * _MS,
        status=_status(ok, mask_text(answer["reason"] or "")[:200] or None),
        attributes={
            "clawstream.request_id": answer["request_id"],
            "clawstream.conversation_id": answer["conversation_id"],
            "clawstream.tenant_id": answer["tenant_id"],
            "clawstream.agent": answer["agent"],
            "clawstream.agent_version": answer["agent_version"],
            "clawstream.status": answer["status"],
            "clawstream.reason_kind": answer["reason_kind"] or "",
            "clawstream.steps": len(answer["timeline"]),
            "gen_ai.usage.input_tokens": usage["prompt_tokens"],
            "gen_ai.usage.output_tokens": usage["completion_tokens"],
            "clawstream.cost_usd": usage["cost_usd"],
        })]
    spans.extend(_step_span(answer["request_id"], entry, trace_id, root, resource)
                 for entry in answer["timeline"])
    return spans


def _step_span(request_id: str, entry: TimelineEntry, trace_id: int, root: SpanContext,
               resource: Resource) -> ReadableSpan:
    start = entry["issued_at_ms"] * _MS
    started = start + int(entry["queue_wait_ms"] * _MS)
    finished = started + int(entry["run_ms"] * _MS)
    end = finished + int(entry["result_wait_ms"] * _MS)
    usage = entry["usage"]
    attributes: dict[str, str | int | float | bool] = {
        "clawstream.step_id": entry["step_id"],
        "clawstream.step_type": entry["step_type"],
        "clawstream.attempt": entry["attempt"],
        "clawstream.worker": entry["worker"],
        "clawstream.status": entry["status"],
        "clawstream.cache_hit": entry["cache_hit"],
        "clawstream.queue_wait_ms": entry["queue_wait_ms"],
        "clawstream.run_ms": entry["run_ms"],
        "clawstream.result_wait_ms": entry["result_wait_ms"],
    }
    if usage is not None:
        attributes["gen_ai.usage.input_tokens"] = usage["prompt_tokens"]
        attributes["gen_ai.usage.output_tokens"] = usage["completion_tokens"]
    context = _context(trace_id, span_id(request_id, entry["step_id"], str(entry["attempt"])))
    return ReadableSpan(
        name=f"{entry['step_type']} {entry['name']}", context=context, parent=root,
        resource=resource, kind=SpanKind.INTERNAL, instrumentation_scope=SCOPE,
        start_time=start, end_time=max(end, start), attributes=attributes,
        status=_status(entry["status"] == "ok", entry["status"]))


class AnswerSpans:
    """Exports the spans of each answer the coordinator sends (see the module doc)."""

    def __init__(self, exporter: SpanExporter, resource: Resource) -> None:
        self._processor = BatchSpanProcessor(exporter)
        self._resource = resource

    def export(self, answer: AgentAnswer) -> None:
        for span in answer_spans(answer, self._resource):
            self._processor.on_end(span)

    def shutdown(self) -> None:
        """Send what is queued (on a clean stop)."""
        self._processor.shutdown()


def otlp_exporter(endpoint: str, worker: str) -> AnswerSpans:
    """Spans to an OTLP/HTTP collector at ``endpoint`` (its base URL: spans go to
    ``/v1/traces``, protobuf), from the worker named ``worker``."""
    return AnswerSpans(OTLPSpanExporter(endpoint=endpoint.rstrip("/") + TRACES_PATH),
                       Resource.create({"service.name": "clawstream-worker",
                                        "service.instance.id": worker}))
