"""Stack-level behaviour that needs no running services."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from clawstream.config import Settings
from clawstream.deploy.local import RichProgress, StackError, down, status
from clawstream.deploy.local.ports import free_port
from clawstream.deploy.local.process import Processes


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        state_dir=tmp_path / "state",
        kafka_port=free_port(),
        kafka_controller_port=free_port(),
        redis_port=free_port(),
        ray_port=free_port(),
        serve_http_port=free_port(),
        worker_web_port=free_port(),
        gateway_port=free_port(),
        worker_count=1,
    )


def test_status_of_a_stopped_stack(settings: Settings) -> None:
    rows = status(settings)
    assert [r.name for r in rows] == ["redis", "kafka", "ray", "serve", "gateway",
                                        "worker-0"]
    assert not any(r.running for r in rows)
    assert all(r.pid is None for r in rows)
    by_name = {r.name: r for r in rows}
    assert by_name["kafka"].address == settings.bootstrap_servers
    assert by_name["kafka"].detail == "stopped"
    assert by_name["serve"].detail == "ray is down"


def test_down_on_a_stopped_stack_is_a_no_op(settings: Settings) -> None:
    lines: list[tuple[str, str]] = []
    down(settings, progress=lambda c, m: lines.append((c, m)))
    assert lines == []


def test_down_stops_processes_and_purges_state(settings: Settings) -> None:
    procs = Processes(settings.run_dir, settings.log_dir)
    procs.start("redis", ["sleep", "60"])  # stand-in: down stops by pid file
    procs.start("worker-0", ["sleep", "60"])
    procs.start("gateway", ["sleep", "60"])
    out = io.StringIO()
    down(settings, purge=True, progress=RichProgress(Console(file=out, width=120)))
    assert not settings.state_dir.exists()
    text = out.getvalue()
    assert "worker-0" in text and "redis" in text and "gateway" in text and "purged" in text


def test_purge_refuses_the_working_directory(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    with pytest.raises(StackError, match="refusing to purge"):
        down(Settings(state_dir=tmp_path, redis_port=free_port()), purge=True)
    assert (tmp_path / "project").is_dir()


def test_cli_up_starts_every_worker_the_settings_ask_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It started only worker-0, whatever ``worker_count`` said."""
    from typer.testing import CliRunner

    import clawstream.deploy.local as local
    from clawstream.cli import app as cli

    calls: list[tuple[bool, int]] = []
    monkeypatch.setenv("CLAWSTREAM_WORKER_COUNT", "3")
    monkeypatch.setattr(local, "up", lambda s, with_workers=True, **_: calls.append(
        (with_workers, s.worker_count)))
    monkeypatch.setattr(local, "status", lambda s: [])
    assert CliRunner().invoke(cli, ["up", "--no-gateway"]).exit_code == 0
    assert calls == [(True, 3)]  # the stack's up starts workers 0..count-1 (start_many)
