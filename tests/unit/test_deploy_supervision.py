"""The supervisor's restart policy (deploy/local/supervision.py), its clean-exit rule, and a
worker's wait for the broker at start-up (streams/admin.py)."""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

import pytest

from clawstream.config import Settings
from clawstream.deploy.local import worker
from clawstream.deploy.local.ports import free_port
from clawstream.deploy.local.supervision import RestartPolicy, read_state
from clawstream.deploy.local.supervisor import Supervisor
from clawstream.streams.admin import wait_for_broker


def test_backoff_doubles_for_quick_failures_and_gives_up_after_the_limit() -> None:
    policy = RestartPolicy(base_s=0.5, cap_s=3.0, healthy_after_s=30, limit=4)
    assert [policy.after_exit(2.0) for _ in range(5)] == [1.0, 2.0, 3.0, 3.0, None]


def test_a_healthy_run_resets_the_count() -> None:
    policy = RestartPolicy(base_s=0.5, cap_s=30.0, healthy_after_s=30, limit=2)
    assert policy.after_exit(1.0) == 1.0
    assert policy.after_exit(1.0) == 2.0
    assert policy.after_exit(45.0) == 0.5  # served for a while, then died: not a loop
    assert policy.after_exit(1.0) == 1.0
    assert policy.after_exit(1.0) == 2.0
    assert policy.after_exit(1.0) is None


def test_a_worker_that_exits_cleanly_is_not_started_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    starts: list[str] = []

    def command(name: str) -> list[str]:
        starts.append(name)
        return [sys.executable, "-c", "raise SystemExit(0)"]

    monkeypatch.setattr(worker, "command", command)
    settings = Settings(state_dir=tmp_path, worker_web_port=free_port())
    supervisor = Supervisor(settings, 0)
    done: list[int] = []
    runner = threading.Thread(target=lambda: done.append(supervisor.run()))
    runner.start()
    runner.join(10)
    assert done == [0] and starts == ["worker-0"]
    state = read_state(settings, 0)
    assert state is not None and (state.state, state.restarts) == ("stopped", 0)


def test_waiting_for_the_broker_backs_off_and_logs_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        clock[0] += s

    answers = iter([False] * 30 + [True])
    with caplog.at_level(logging.INFO, logger="clawstream.streams.admin"):
        waited = wait_for_broker("127.0.0.1:1", base_s=0.5, cap_s=5.0, report_every_s=30,
                                 sleep=sleep, clock=lambda: clock[0],
                                 answers=lambda _b: next(answers))
    assert slept[:5] == [0.5, 1.0, 2.0, 4.0, 5.0] and max(slept) == 5.0
    assert waited == sum(slept) == 137.5
    waiting = [r for r in caplog.records if "does not answer" in r.getMessage()]
    assert len(waiting) == 5  # at 0 s, then once every 30 s, not once per try
    assert "answers after 137.5 s" in caplog.records[-1].getMessage()
