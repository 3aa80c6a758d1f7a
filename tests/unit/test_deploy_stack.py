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
        prometheus_port=free_port(),
        schema_registry_port=free_port(),
        worker_count=1,
    )


def test_status_of_a_stopped_stack(settings: Settings) -> None:
    rows = status(settings)
    assert [r.name for r in rows] == ["redis", "kafka", "ray", "serve", "gateway",
                                        "prometheus", "registry", "worker-0"]
    assert not any(r.running for r in rows)
    assert all(r.pid is None for r in rows)
    by_name = {r.name: r for r in rows}
    assert by_name["kafka"].address == settings.bootstrap_servers
    assert by_name["kafka"].detail == "stopped"
    assert by_name["serve"].detail == "ray is down"
    assert by_name["prometheus"].address == f"http://127.0.0.1:{settings.prometheus_port}"


def test_status_leaves_out_a_prometheus_switched_off(settings: Settings) -> None:
    off = settings.model_copy(update={"prometheus_enabled": False})
    assert "prometheus" not in [r.name for r in status(off)]


def test_down_on_a_stopped_stack_is_a_no_op(settings: Settings) -> None:
    lines: list[tuple[str, str]] = []
    down(settings, progress=lambda c, m: lines.append((c, m)))
    assert lines == []


def test_down_stops_processes_and_purges_state(settings: Settings) -> None:
    procs = Processes(settings.run_dir, settings.log_dir)
    procs.start("redis", ["sleep", "60"])  # stand-in: down stops by pid file
    procs.start("worker-0", ["sleep", "60"])
    procs.start("gateway", ["sleep", "60"])
    procs.start("registry", ["sleep", "60"])
    out = io.StringIO()
    down(settings, purge=True, progress=RichProgress(Console(file=out, width=120)))
    assert not settings.state_dir.exists()
    text = out.getvalue()
    assert "worker-0" in text and "redis" in text and "gateway" in text and "purged" in text
    assert "registry" in text


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


def test_code_version_follows_linked_folders_and_changes_with_any_source(
        tmp_path: Path) -> None:
    from clawstream.deploy.local import code_version

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "rules.py").write_text("X = 1\n")
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "linked").symlink_to(outside, target_is_directory=True)
    (pkg / "notes.txt").write_text("not code")
    before = code_version.current(pkg)
    assert code_version.current(pkg) == before
    (pkg / "notes.txt").write_text("still not code")
    assert code_version.current(pkg) == before
    (outside / "rules.py").write_text("X = 2\n")
    assert code_version.current(pkg) != before


def test_up_restarts_the_parts_that_run_code_when_the_stack_was_started_by_other_code(
        settings: Settings) -> None:
    from clawstream.deploy.local import code_version
    from clawstream.deploy.local.stack import _restart_other_code

    procs = Processes(settings.run_dir, settings.log_dir)
    procs.start("worker-0", ["sleep", "60"])  # stand-ins: stopped by pid file
    procs.start("gateway", ["sleep", "60"])
    code_version.stamp(settings, "0123456789abcdef")
    lines: list[tuple[str, str]] = []
    assert _restart_other_code(settings, "fedcba9876543210", lambda c, m: lines.append((c, m)))
    assert not procs.is_running("worker-0") and not procs.is_running("gateway")
    assert lines and "0123456789abcdef" in lines[0][1] and "worker-0" in lines[0][1]

    procs.start("worker-0", ["sleep", "60"])
    code_version.stamp(settings, "fedcba9876543210")
    assert not _restart_other_code(settings, "fedcba9876543210", lambda c, m: None)
    assert procs.is_running("worker-0")
    down(settings)
