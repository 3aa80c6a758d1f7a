"""``clawstream trace`` on the real stack: a request with a retried model step, and a
request whose step is still running, rebuilt from the topics alone."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any, cast

import pyarrow.parquet as pq
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Status
from typer.testing import CliRunner

from clawstream.cli.app import app
from clawstream.config import Settings
from clawstream.processors.keys import tenant_conversation_id
from clawstream.streams.topics import (
    ANSWERS,
    EVENTS,
    INFERENCE_REQUESTS,
    REQUESTS_INTERACTIVE,
    RESULTS,
)
from clawstream.streams.trace import TRACE_TOPICS, partitions_of, read_range
from clawstream.streams.tracecontext import parse, w3c_trace_id
from tests.integration.flow import (
    answer_to,
    ask,
    events_of,
    has_event,
    same_partition_ids,
    script,
    script_marker,
    send,
)
from tests.integration.otlp_collector import Collector
from tests.integration.test_gateway import fetch, http, make_key

pytestmark = pytest.mark.integration


def trace(*args: str) -> str:
    result = CliRunner(env={"COLUMNS": "260"}).invoke(app, ["trace", *args, "--since", "1h"])
    assert result.exit_code == 0, result.output
    return result.output


def test_a_retried_request_is_traced_from_its_partition_and_by_id_alone(
        worker: Settings) -> None:
    marker = script_marker()
    script(worker, marker, {"text": "fine after one failure", "error": {"status": 500}})
    mine, neighbour = same_partition_ids(f"tr-{marker[-8:]}", worker.partitions, 2)
    other = ask(worker, agent="chat", conversation_id=neighbour, text="Hello there.")
    answer = ask(worker, agent="assistant", conversation_id=mine,
                 text=f"Say something. {marker}")
    assert answer["status"] == "ok"
    # The conversation alone: its own request only, not its partition's other ones.
    whole = trace("--conversation", mine)
    assert answer["trace_id"] in whole and other["trace_id"] not in whole
    out = trace(answer["request_id"], "--conversation", answer["conversation_id"])
    for seen in ("request", "step_issued", "model result", "retry_scheduled", "answer",
                 " error "):
        assert seen in out, seen
    assert out.index("retry_scheduled") < out.rindex("answer")
    assert not re.search(r"│\s*in flight\s*│", out)  # no step left without its result
    assert trace(answer["request_id"]).count("retry_scheduled") == 1  # without its conversation


def test_the_answers_spans_reach_an_otlp_collector(worker: Settings, otlp: Collector) -> None:
    """The request and each step attempt as spans in the request's W3C trace, decoded by
    the OpenTelemetry project's own protobuf classes: times, parents, statuses."""
    marker = script_marker()
    script(worker, marker, {"text": "fine after one failure", "error": {"status": 500}})
    answer = ask(worker, agent="assistant", conversation_id=f"ot-{marker[-8:]}",
                 text=f"Say something. {marker}")
    steps = answer["timeline"]
    assert answer["status"] == "ok" and steps
    received = otlp.await_spans(w3c_trace_id(answer["trace_id"]), 1 + len(steps))
    spans = {span.span_id: (resource, span) for resource, span in received}  # once each
    assert len(spans) == 1 + len(steps)
    [(resource, root)] = [(r, s) for r, s in spans.values() if not s.parent_span_id]
    assert resource["service.name"] == "clawstream-worker"
    assert resource["service.instance.id"] == "worker-0"
    assert root.name == "request assistant"
    assert root.start_time_unix_nano == answer["created_at_ms"] * 1_000_000
    assert root.end_time_unix_nano == answer["answered_at_ms"] * 1_000_000
    attributes = {a.key: a.value for a in root.attributes}
    assert attributes["clawstream.request_id"].string_value == answer["request_id"]
    assert attributes["clawstream.status"].string_value == "ok"
    children = [s for _, s in spans.values() if s.parent_span_id == root.span_id]
    assert sorted((c.name, c.start_time_unix_nano) for c in children) == sorted(
        (f"{e['step_type']} {e['name']}", e["issued_at_ms"] * 1_000_000) for e in steps)
    errors = sum(c.status.code == Status.STATUS_CODE_ERROR for c in children)
    assert errors == sum(e["status"] != "ok" for e in steps)
    assert all(c.end_time_unix_nano >= c.start_time_unix_nano for c in children)


def test_every_hop_carries_the_requests_w3c_traceparent(worker: Settings) -> None:
    request = send(worker, agent="chat", conversation_id=f"tp-{script_marker()[-8:]}",
                   text="Say hello.")
    assert answer_to(worker, request)["status"] == "ok"
    topics = (*TRACE_TOPICS, INFERENCE_REQUESTS.name)
    ranges = partitions_of(worker.bootstrap_servers, request["conversation_id"], topics)
    found = [f for f in read_range(worker.bootstrap_servers, ranges,
                                   request["created_at_ms"] - 5000)
             if cast(dict[str, Any], f.record).get("request_id") == request["request_id"]]
    hops = {f.topic for f in found}
    assert {REQUESTS_INTERACTIVE.name, INFERENCE_REQUESTS.name, RESULTS.name, EVENTS.name,
            ANSWERS.name} <= hops
    parents = set()
    for f in found:
        context = parse(f.headers)
        assert context is not None, f"{f.topic} {f.schema} has no traceparent"
        assert context[0] == w3c_trace_id(request["trace_id"])
        parents.add(context[1])
    assert len(parents) > len(hops)  # one parent id per hop, not one per topic


def test_a_step_still_running_shows_as_in_flight(worker: Settings) -> None:
    marker = script_marker()
    script(worker, marker, {"text": "late but here", "delay_ms": 8000})
    request = send(worker, agent="assistant", conversation_id=f"tf-{marker[-8:]}",
                   text=f"Take your time. {marker}")
    events_of(worker, request["conversation_id"], until=has_event("step_issued"))
    out = trace(request["request_id"], "--conversation", request["conversation_id"])
    assert "in flight" in out and "answer" not in out
    assert answer_to(worker, request)["status"] == "ok"
    assert "in flight" not in trace(request["request_id"], "--conversation",
                                    request["conversation_id"])


def test_replay_writes_a_tenants_records_to_jsonl_with_progress(worker: Settings,
                                                                 tmp_path: Path) -> None:
    tenant = f"rp-{script_marker()[-8:]}"
    request = send(worker, agent="chat", conversation_id=f"rp-{script_marker()[-8:]}",
                   text="Say hello. Mail ann@example.org, card 4111 1111 1111 1111.",
                   tenant_id=tenant)
    assert answer_to(worker, request)["status"] == "ok"
    out = tmp_path / "tenant.jsonl"
    result = CliRunner(env={"COLUMNS": "160"}).invoke(
        app, ["replay", "--tenant", tenant, "--since", "10m", "--out", str(out)])
    assert result.exit_code == 0, result.output
    exported = out.read_text()
    assert "ann@example.org" not in exported and "4111 1111 1111 1111" not in exported
    assert "[email]" in exported and "[card]" in exported  # masked unless --raw
    rows = [json.loads(line) for line in exported.splitlines()]
    assert {r["record"]["request_id"] for r in rows} == {request["request_id"]}
    schemas = {r["schema"] for r in rows}
    assert {"clawstream.AgentRequest", "clawstream.AgentAnswer", "clawstream.AgentEvent",
            "clawstream.StepResult"} <= schemas
    by_conversation = tmp_path / "conversation.parquet"
    result = CliRunner().invoke(app, ["replay", "--conversation", request["conversation_id"],
                                      "--since", "10m", "--out", str(by_conversation)])
    assert result.exit_code == 0, result.output
    table = pq.read_table(by_conversation).to_pylist()
    assert sorted((r["topic"], r["offset"]) for r in table) == sorted(
        (r["topic"], r["offset"]) for r in rows)
    assert {r["tenant_id"] for r in table if r["schema"] == "clawstream.AgentRequest"} == {
        tenant}


def test_a_callers_traceparent_at_the_gateway_carries_through_every_hop(
        gateway: Settings) -> None:
    tenant = f"tg-{script_marker()[-8:]}"
    key = make_key(gateway, tenant)
    caller_trace = uuid.uuid4().hex
    with http(gateway, key) as h:
        created = h.post("/v1/requests", json={"agent": "chat", "text": "Say hello."},
                         headers={"traceparent": f"00-{caller_trace}-{'a1' * 8}-01"})
        assert created.status_code == 202, created.text
    body = created.json()
    answer = fetch(gateway, key, body["id"]).json()
    assert answer["status"] == "ok"
    conversation_id = tenant_conversation_id(tenant, body["conversation"])
    ranges = partitions_of(gateway.bootstrap_servers, conversation_id, TRACE_TOPICS)
    found = [f for f in read_range(gateway.bootstrap_servers, ranges, body["created_at_ms"] - 5000)
             if cast(dict[str, Any], f.record).get("request_id") == body["id"]]
    assert {f.topic for f in found} >= {REQUESTS_INTERACTIVE.name, RESULTS.name, ANSWERS.name}
    assert {cast(dict[str, Any], f.record).get("trace_id", caller_trace) for f in found} == {
        caller_trace}
    assert {(parse(f.headers) or ("none",))[0] for f in found} == {caller_trace}
