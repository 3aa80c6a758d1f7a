"""The metrics: one catalogue, bounded labels, and what each record adds to them."""

from __future__ import annotations

import re
from typing import Any, cast

from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY, generate_latest

from clawstream import metrics
from clawstream.gateway.app import Timed
from clawstream.gateway.errors import rate_limited
from clawstream.processors.flow.dispatch import Dispatcher, Unlimited
from clawstream.processors.flow.scheduler import LaneScheduler, Pending
from clawstream.processors.observe import (
    ConsumerLag,
    observe_output,
    observe_result_back,
    observe_step,
)
from clawstream.processors.records import Output, answer, event
from clawstream.schemas.names import DEAD_LETTER
from clawstream.schemas.records import StepCommand, StepResult, Usage, empty_usage
from clawstream.streams.publisher import new_request
from clawstream.streams.topics import DLQ, INFERENCE_REQUESTS_BATCH, TOOL_REQUESTS


def value(series: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(series, labels) or 0.0


def test_every_name_is_ours_and_no_label_is_an_id() -> None:
    assert all(re.fullmatch(r"(ray_)?clawstream_[a-z_]+", n) for n in metrics.NAMES)
    for family in REGISTRY.collect():
        if family.name.startswith("clawstream_"):
            for sample in family.samples:
                assert not {"request_id", "conversation_id", "step_id", "user_id",
                            "trace_id"} & set(sample.labels)


def _usage(cost: float, prompt: int, completion: int) -> Usage:
    return {**empty_usage(), "cost_usd": cost, "prompt_tokens": prompt,
            "completion_tokens": completion}


def test_an_answer_counts_its_status_latency_and_the_tenants_cost() -> None:
    req = new_request(agent="echo", conversation_id="c-metrics", text="hi",
                      tenant_id="t-metrics", deadline_s=5)
    active: Any = {"usage": _usage(0.25, 100, 7), "timeline": [], "cache": []}
    before = value("clawstream_request_latency_seconds_count", kind="request", status="ok")
    observe_output(answer(req, "ok", "hello", None, req["created_at_ms"] + 1500, "v1",
                          active))
    assert value("clawstream_request_latency_seconds_count", kind="request",
                 status="ok") == before + 1
    assert value("clawstream_tenant_cost_usd_total", tenant="t-metrics") == 0.25
    assert value("clawstream_tenant_tokens_total", tenant="t-metrics", direction="out") == 7

    child = {**req, "parent_request_id": "p", "request_id": "child"}
    observe_output(answer(cast(Any, child), "degraded", "", "cut", req["created_at_ms"], "v1",
                          active, reason_kind="degraded"))
    assert value("clawstream_answers_total", status="degraded", reason_kind="degraded") >= 1
    # a child's usage is in its parent's answer: billed once
    assert value("clawstream_tenant_cost_usd_total", tenant="t-metrics") == 0.25


def test_events_and_dead_letters_are_counted_by_kind() -> None:
    subject: Any = {"conversation_id": "c", "request_id": "r", "trace_id": "t", "agent": "a"}
    before = value("clawstream_events_total", event_type="retry_scheduled")
    observe_output(event("retry_scheduled", 1, subject))
    assert value("clawstream_events_total", event_type="retry_scheduled") == before + 1
    letter: Any = {"source_topic": TOOL_REQUESTS.name, "error_class": "DecodeError"}
    observe_output(Output(DLQ.name, "c", DEAD_LETTER, letter))
    assert value("clawstream_dead_letters_total", source_topic=TOOL_REQUESTS.name,
                 error_class="DecodeError") >= 1


def _step(kind: str, lane: str, tool: str | None) -> tuple[StepCommand, StepResult]:
    cmd: Any = {"step_type": kind, "lane": lane,
                "tool_call": {"name": tool} if tool else None}
    result: Any = {"step_type": kind, "status": "ok", "cache_hit": False,
                   "issued_at_ms": 1000, "started_at_ms": 1250, "finished_at_ms": 3250,
                   "usage": _usage(0.01, 40, 9)}
    return cmd, result


def test_a_step_records_queue_wait_run_time_and_tokens_by_pool_or_tool() -> None:
    cmd, result = _step("model", "batch", None)
    observe_step(cmd, "pool-x", result)
    assert value("clawstream_queue_wait_seconds_sum", topic=INFERENCE_REQUESTS_BATCH.name,
                 lane="batch") >= 0.25
    assert value("clawstream_step_run_seconds_sum", step_type="model", name="pool-x",
                 status="ok") == 2.0
    assert value("clawstream_step_tokens_total", pool="pool-x", direction="in") == 40
    cmd, result = _step("tool", "interactive", "tool-y")
    observe_step(cmd, "", result)
    assert value("clawstream_queue_wait_seconds_count", topic=TOOL_REQUESTS.name,
                 lane="interactive") >= 1
    assert value("clawstream_step_cost_usd_total", name="tool-y") == 0.01
    assert value("clawstream_step_tokens_total", pool="tool-y", direction="in") == 0
    observe_result_back(result, 3250 + 40)
    assert value("clawstream_result_back_seconds_count", step_type="tool") >= 1


def test_consumer_lag_is_read_at_scrape_time() -> None:
    positions = [("topic-a", 0, 120, 100), ("topic-a", 1, 5, None)]
    families = list(ConsumerLag("group-g", lambda: positions).collect())
    samples = {(s.labels["topic"], s.labels["partition"]): s.value
               for s in families[0].samples}
    assert samples == {("topic-a", "0"): 20, ("topic-a", "1"): 5}
    assert families[0].name == metrics.CONSUMER_LAG


async def _run(item: Pending) -> object:
    return None


async def _finish(item: Pending, output: object) -> None:
    return None


def test_a_dispatchers_buffers_are_read_when_scraped() -> None:
    scheduler = LaneScheduler(10)
    Dispatcher("probe-exec", scheduler, Unlimited(), _run, _finish, 2)
    cmd: Any = {"lane": "batch", "tenant_id": "t", "step_id": "s", "conversation_id": "c"}
    scheduler.push(Pending(cmd, None))
    assert value("clawstream_steps_buffered", executor="probe-exec", lane="batch") == 1
    assert value("clawstream_steps_in_flight", executor="probe-exec") == 0


def test_the_gateway_times_by_route_template_and_counts_refusals() -> None:
    app = FastAPI()

    @app.get("/v1/requests/{request_id}")
    async def get(request_id: str) -> dict[str, str]:
        if request_id == "limited":
            raise_it = rate_limited("slow down", 1.0)
            return cast(Any, raise_it.response())
        return {"id": request_id}

    app.add_middleware(Timed)
    client = TestClient(app)
    before = value("clawstream_gateway_refusals_total", status="429",
                   code="rate_limit_exceeded")
    assert client.get("/v1/requests/abc").status_code == 200
    assert client.get("/v1/requests/limited").status_code == 429
    assert value("clawstream_gateway_request_seconds_count", route="/v1/requests/{request_id}",
                 method="GET", code="200") >= 1
    assert value("clawstream_gateway_refusals_total", status="429",
                 code="rate_limit_exceeded") == before + 1
    assert b'request_id="abc"' not in generate_latest()
