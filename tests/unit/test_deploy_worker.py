"""Worker naming, ports, environment, and pid-file discovery (with stand-in processes)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from clawstream.config import Settings
from clawstream.deploy.local import status, worker
from clawstream.deploy.local.env import settings_env
from clawstream.deploy.local.errors import NotReadyError
from clawstream.deploy.local.ports import free_port
from clawstream.deploy.local.process import Processes


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(state_dir=tmp_path, worker_web_port=46066, kafka_port=39292)


def test_command_and_ports(settings: Settings) -> None:
    assert worker.command("worker-1") == [
        sys.executable, "-m", "clawstream.processors.main", "worker", "--name", "worker-1",
    ]  # fmt: skip
    assert worker.web_port(settings, 0) == 46066
    assert worker.web_port(settings, 2) == 46068


def test_env_carries_the_stack_settings_and_own_port(settings: Settings) -> None:
    env = worker.worker_env(settings, 2)
    assert env["CLAWSTREAM_WORKER_WEB_PORT"] == "46068"
    assert env["CLAWSTREAM_STATE_DIR"] == str(settings.state_dir)
    assert env["CLAWSTREAM_KAFKA_PORT"] == "39292"
    assert "HOME" in env  # inherited


def test_a_child_acts_as_its_own_role_and_sees_no_one_elses_secret(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from clawstream.config import PoolSpec, UpstreamSpec
    from clawstream.deploy.local.env import child_env

    with_upstream = settings.model_copy(update={"pools": {"remote": PoolSpec(
        capacity_tokens_per_s=100, backend_model="m", upstream=UpstreamSpec(
            base_url="http://up.example", model="m", api_key_env="UPSTREAM_KEY"))}})
    monkeypatch.setenv("UPSTREAM_KEY", "sk-secret")
    monkeypatch.setenv("CLAWSTREAM_CREDENTIALS_FILE", "/the/spawners/own.json")
    monkeypatch.setenv("CLAWSTREAM_KAFKA_PASSWORD", "spawners-password")
    worker_env = child_env(with_upstream, role="worker")
    assert worker_env["CLAWSTREAM_ROLE"] == "worker"
    assert not {"UPSTREAM_KEY", "CLAWSTREAM_CREDENTIALS_FILE",
                "CLAWSTREAM_KAFKA_PASSWORD"} & worker_env.keys()
    model_env = child_env(with_upstream, role="inference")
    assert model_env["UPSTREAM_KEY"] == "sk-secret"  # only where the model calls run
    assert "CLAWSTREAM_KAFKA_PASSWORD" not in model_env


def test_settings_env_round_trips(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in settings_env(settings).items():
        monkeypatch.setenv(key, value)
    assert Settings().model_dump() == settings.model_dump()


def test_running_lists_live_workers_and_stop_all_stops_them(settings: Settings) -> None:
    procs = Processes(settings.run_dir, settings.log_dir)
    for name in ("worker-1", "worker-0", "redis"):
        procs.start(name, ["sleep", "60"])
    try:
        assert worker.running(settings) == ["worker-0", "worker-1"]
        assert worker.kill(settings, 1)
        assert worker.running(settings) == ["worker-0"]
        assert worker.stop_all(settings, timeout=5.0) == ["worker-0"]
        assert worker.running(settings) == []
        assert procs.is_running("redis")
    finally:
        for name in ("worker-0", "worker-1", "redis"):
            procs.kill(name)


def test_not_ready_without_a_worker(settings: Settings) -> None:
    assert not worker.is_ready(settings, 0, timeout=0.2)


FAKE_WORKER = """
import http.server, os, sys, time
port = int(os.environ["CLAWSTREAM_WORKER_WEB_PORT"])
name = sys.argv[1]
started = time.monotonic()

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ready = self.path == "/ready" and time.monotonic() - started > 0.5
        self.send_response(200 if ready else 503)
        self.end_headers()
        self.wfile.write(name.encode())

    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


def _fake_worker(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> None:
    """Workers run ``argv`` instead of Faust, also when their supervisor (a process of its
    own) starts them: the supervisor runs through a wrapper that swaps the command."""
    monkeypatch.setattr(worker, "command", lambda name: [*argv, name])
    wrapper = ("import sys; from clawstream.deploy.local import supervisor, worker; "
               f"worker.command = lambda name: {argv!r} + [name]; "
               "sys.exit(supervisor.main(sys.argv[1:]))")
    monkeypatch.setattr(worker, "supervisor_command",
                        lambda index: [sys.executable, "-c", wrapper, str(index)])


def test_start_waits_for_ready_on_its_own_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER)
    _fake_worker(monkeypatch, [sys.executable, str(script)])
    settings = Settings(state_dir=tmp_path / "state", worker_web_port=free_port())
    try:
        infos = worker.start_many(settings, 2, timeout=20.0)
        assert [i.started for i in infos] == [True, True]
        assert worker.is_ready(settings, 0) and worker.is_ready(settings, 1)
        assert worker.start(settings, 1).started is False  # idempotent
        assert "supervisor: running, 0 restart(s)" in worker.summary(settings, 1)
    finally:
        assert worker.stop_all(settings, timeout=5.0) == ["worker-0", "worker-1"]
    assert worker.running(settings) == []
    assert "supervisor: stopped" in worker.summary(settings, 0)


def test_a_killed_worker_is_started_again_by_its_supervisor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER)
    _fake_worker(monkeypatch, [sys.executable, str(script)])
    settings = Settings(state_dir=tmp_path / "state", worker_web_port=free_port())
    try:
        worker.start(settings, 0, timeout=20.0)
        first = worker.pid(settings, 0)
        assert worker.kill(settings, 0)
        worker.wait_ready(settings, 0, timeout=20.0)
        assert worker.pid(settings, 0) not in (None, first)
        assert "1 restart(s), last exit killed by SIGKILL" in worker.summary(settings, 0)
        [row] = [r for r in status(settings) if r.name == "worker-0"]
        assert row.running and "1 restart(s), last exit killed by SIGKILL" in row.detail
    finally:
        worker.stop_all(settings, timeout=5.0)


def test_a_crash_looping_worker_fails_with_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_worker(monkeypatch, [sys.executable, "-c",
                               "print('boom: no broker'); raise SystemExit(2)"])
    settings = Settings(state_dir=tmp_path / "state", worker_web_port=free_port(),
                        worker_restart_backoff_s=0.05, worker_restart_limit=2)
    t = time.monotonic()
    with pytest.raises(NotReadyError, match=r"(?s)supervisor: gave up.*boom: no broker"):
        worker.start(settings, 0, timeout=60.0)
    assert time.monotonic() - t < 20.0
