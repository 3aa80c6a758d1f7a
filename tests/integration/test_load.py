"""``clawstream load`` with a compressed seed profile and every fault on, against its own
real stack (simulated model, two supervised workers): the report is written, and its
verdict matches what the topics say when read back independently; nothing is lost."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from clawstream.cli import app as cli
from clawstream.config import Settings
from clawstream.deploy.local.env import settings_env
from clawstream.streams.subscriber import read_topic
from clawstream.streams.topics import ANSWERS, DLQ, LANE_TOPICS
from tests.integration.flow import ask, side_stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def load_stack() -> Iterator[Settings]:
    # Two replicas of the model deployment (a CPU of Ray's each): the limiter test below
    # counts them.
    with side_stack("load", 42, inference_backend="simulated", worker_count=2,
                    agent_modules=["fixtures.faults"], inference_min_replicas=2,
                    inference_max_replicas=2, ray_num_cpus=4) as settings:
        yield settings


def _read(settings: Settings, topic: str) -> list[dict[str, Any]]:
    return [dict(r) for _, r in read_topic(settings.bootstrap_servers, topic, timeout_s=3)]


def test_a_compressed_seed_profile_with_every_fault_loses_nothing(
        load_stack: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in settings_env(load_stack).items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(cli, [
        "load", "--profile", "seed", "--rate", "1.5", "--seconds", "45", "--seed", "3",
        "--tool-error-rate", "0.3", "--tool-latency-rate", "0.2", "--tool-latency-s", "1.5",
        "--model-error-rate", "0.2", "--kill-worker-every", "15", "--broker-restart-at", "22",
        "--broker-down", "3", "--redis-restart-at", "33", "--redis-down", "2",
        "--report", str(tmp_path)])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "verdict.json").read_text())["summary"]
    assert (tmp_path / "report.html").is_file() and (tmp_path / "latency.png").is_file()
    assert summary["faults"] == ["15s worker-0", "22s kafka", "30s worker-1", "33s redis"]

    # The topics, read back on their own: what was asked, what was answered.
    requests = [r for topic in LANE_TOPICS.values() for r in _read(load_stack, topic.name)
                if str(r["conversation_id"]).startswith("load-")]
    asked = {r["request_id"] for r in requests}
    answers = Counter(a["request_id"] for a in _read(load_stack, ANSWERS.name)
                      if a["request_id"] in asked)
    firsts = {a["request_id"]: a for a in _read(load_stack, ANSWERS.name)
              if a["request_id"] in asked}
    letters = [d for d in _read(load_stack, DLQ.name) if d.get("request_id") in asked]
    assert summary["sent"] == len(asked) > 50
    assert summary["answered"] == len(answers)
    assert summary["answered_once"] == sum(n == 1 for n in answers.values())
    assert summary["lost"] == len(asked - answers.keys()) == 0
    assert summary["doubled"] == sum(n - 1 for n in answers.values()) == 0
    assert summary["duplicate_effects"] == 0 and summary["effects_counted"] > 10
    assert summary["statuses"] == dict(Counter(a["status"] for a in firsts.values()))
    assert summary["dead_letters"] == len(letters)
    # The faults showed: tool retries and model 503s took attempts beyond the first.
    attempts = [e["attempt"] for a in firsts.values() for e in a["timeline"]]
    assert max(attempts) >= 2


def _worker_gauges(settings: Settings, index: int, name: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    from clawstream.deploy.local.worker import web_port

    text = httpx.get(f"http://127.0.0.1:{web_port(settings, index)}/metrics", timeout=5).text
    return {s.labels["pool"]: s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == name}


def test_the_limiter_counts_the_model_replicas_serve_runs(load_stack: Settings) -> None:
    """Serve runs two replicas of the model here: its /replicas says so, every worker's
    limiter counts both, and a model step admitted now gets two replicas' tokens/s."""
    running = httpx.get(f"{load_stack.serve_url}/replicas", timeout=10).json()["running"]
    assert running["clawstream-generator/generator"] == 2
    for index in range(load_stack.worker_count):
        deadline = time.monotonic() + 60
        while _worker_gauges(load_stack, index, "clawstream_pool_replicas").get("small") != 2:
            assert time.monotonic() < deadline, f"worker {index} never counted 2 replicas"
            time.sleep(load_stack.pool_replicas_poll_s / 5)  # the worker polls Serve
    answer = ask(load_stack, agent="chat", conversation_id=f"replicas-{time.time_ns()}",
                 text="count the replicas")
    assert answer["status"] == "ok", answer["reason"]
    per_replica = load_stack.pools["small"].capacity_tokens_per_s
    rates = [_worker_gauges(load_stack, i, "clawstream_pool_rate_tokens_per_second")
             .get("small", 0.0) for i in range(load_stack.worker_count)]
    assert max(rates) == pytest.approx(2 * per_replica * (1 - load_stack.pool_headroom))
