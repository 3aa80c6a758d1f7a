"""``clawstream load`` with a compressed seed profile and every fault on, against its own
real stack (simulated model, two supervised workers): the report is written, and its
verdict matches what the topics say when read back independently; nothing is lost."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from clawstream.cli import app as cli
from clawstream.config import Settings
from clawstream.deploy.local.env import settings_env
from clawstream.streams.subscriber import read_topic
from clawstream.streams.topics import ANSWERS, DLQ, LANE_TOPICS
from tests.integration.flow import side_stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def load_stack() -> Iterator[Settings]:
    with side_stack("load", 42, inference_backend="simulated", worker_count=2,
                    agent_modules=["fixtures.faults"]) as settings:
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
