"""Metrics on the real stack, read back through the real Prometheus ``up`` started.

A request goes through the gateway, the coordinator, the dispatcher and a model replica;
Prometheus's own HTTP API must then hold series from every process, with the counts that
request added (answers, steps, tokens, the tenant's cost)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from clawstream.cli.app import app
from clawstream.config import Settings
from clawstream.deploy.local import prometheus
from clawstream.streams.topics import INFERENCE_REQUESTS
from tests.integration.test_gateway import ask, fetch, make_key

pytestmark = pytest.mark.integration


def query(settings: Settings, promql: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{prometheus.url(settings)}/api/v1/query",
                         params={"query": promql}, timeout=10)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "success"
    return list(body["data"]["result"])


def scalar(settings: Settings, promql: str) -> float:
    result = query(settings, promql)
    return float(result[0]["value"][1]) if result else 0.0


def await_value(settings: Settings, promql: str, at_least: float,
                timeout_s: float = 60.0) -> float:
    """Prometheus sees a change one scrape after it happened: ask until it has."""
    deadline = time.monotonic() + timeout_s
    seen = scalar(settings, promql)
    while seen < at_least and time.monotonic() < deadline:
        time.sleep(0.5)
        seen = scalar(settings, promql)
    return seen


def test_prometheus_scrapes_every_process_and_counts_a_request(gateway: Settings) -> None:
    tenant = f"tm-{uuid.uuid4().hex[:6]}"
    key = make_key(gateway, tenant)
    before_ok = scalar(gateway, 'sum(clawstream_answers_total{status="ok"})')
    before_steps = scalar(gateway, "sum(clawstream_step_run_seconds_count"
                                   '{step_type="model"})')

    created = ask(gateway, key, f"Say hello to the metrics {uuid.uuid4().hex[:6]}.")
    answer = fetch(gateway, key, created["id"]).json()
    assert answer["status"] == "ok", answer
    usage = answer["answer"]["usage"]

    # the coordinator's answer, the dispatcher's step, the tenant's bill
    assert await_value(gateway, 'sum(clawstream_answers_total{status="ok"})',
                       before_ok + 1) >= before_ok + 1
    assert await_value(gateway, 'sum(clawstream_step_run_seconds_count{step_type="model"})',
                       before_steps + 1) >= before_steps + 1
    assert scalar(gateway, "sum(clawstream_queue_wait_seconds_count"
                           f'{{topic="{INFERENCE_REQUESTS.name}",lane="interactive"}})') >= 1
    assert scalar(gateway, 'sum(clawstream_result_back_seconds_count{step_type="model"})') >= 1
    tokens_out = await_value(gateway, "sum(clawstream_tenant_tokens_total"
                                      f'{{tenant="{tenant}",direction="out"}})',
                             usage["completion_tokens"])
    assert tokens_out == usage["completion_tokens"] > 0
    assert scalar(gateway, f'sum(clawstream_tenant_cost_usd_total{{tenant="{tenant}"}})'
                  ) == pytest.approx(usage["cost_usd"])

    # every process is up and exports ours: workers, the gateway, the Serve app
    up = {r["metric"]["job"]: r["value"][1] for r in query(gateway, "up")}
    assert up == {"worker": "1", "gateway": "1", "serve": "1"}
    assert await_value(gateway, 'count(clawstream_gateway_request_seconds_count'
                                '{route="/v1/requests"})', 1) >= 1
    assert await_value(gateway, "sum(ray_clawstream_serve_generate_seconds_count)", 1) >= 1
    assert await_value(gateway, 'sum(ray_clawstream_serve_tokens_total{direction="out"})',
                       1) >= 1
    lag = query(gateway, 'clawstream_consumer_lag{job="worker"}')
    assert lag and {r["metric"]["group"] for r in lag} == {gateway.app_id}


def test_top_shows_the_figures_from_the_real_prometheus(gateway: Settings) -> None:
    tenant = f"tt-{uuid.uuid4().hex[:6]}"
    key = make_key(gateway, tenant)
    created = ask(gateway, key, f"Say hello to top {uuid.uuid4().hex[:6]}.")
    assert fetch(gateway, key, created["id"]).json()["status"] == "ok"
    await_value(gateway, f'sum(clawstream_tenant_cost_usd_total{{tenant="{tenant}"}})', 1e-12)
    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["top", "--once", "--window", "5m"])
    assert result.exit_code == 0, result.output
    for figure in ("request latency p50", "request latency p95", "request latency p99",
                   "queue wait p95", "step run p95", "tokens/s", "consumer lag", tenant):
        assert figure in result.output, figure
