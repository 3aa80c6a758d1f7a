"""The worker's reading of Serve's replica count: parsed into the limiter's view, kept
through an outage of the Serve app (a limiter must never wait on Serve)."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import REGISTRY

from clawstream.config import PoolSpec, Settings
from clawstream.processors.flow.replicas import ServeReplicas

GENERATOR = "clawstream-generator/generator"


def _gauge() -> float | None:
    return REGISTRY.get_sample_value("clawstream_pool_replicas", {"pool": "solo"})


def _client(answers: list[httpx.Response]) -> httpx.Client:
    def handle(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/replicas"
        return answers.pop(0)
    return httpx.Client(transport=httpx.MockTransport(handle))


def test_the_count_is_read_and_kept_while_serve_cannot_answer(
        caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(pools={"solo": PoolSpec(capacity_tokens_per_s=10.0)})
    replicas = ServeReplicas(settings)
    assert replicas.running() == {}  # before the first answer: one replica's worth
    client = _client([
        httpx.Response(200, json={"running": {GENERATOR: 3, "other/d": 1}}),
        httpx.Response(503, json={"error": "overloaded"}),
        httpx.Response(200, text="not json"),
        httpx.Response(200, json={"running": {GENERATOR: 2}}),
    ])
    replicas.poll(client)
    assert replicas.running() == {GENERATOR: 3, "other/d": 1}
    assert _gauge() == 3
    replicas.poll(client)
    replicas.poll(client)
    assert replicas.running() == {GENERATOR: 3, "other/d": 1}
    assert sum("cannot read Serve's replica count" in r.message for r in caplog.records) == 1
    replicas.poll(client)
    assert replicas.running() == {GENERATOR: 2}
    assert _gauge() == 2
