"""redis-server command line and failure messages (no server started here)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from clawstream.config import Settings
from clawstream.deploy.local import redis as redis_local
from clawstream.deploy.local.errors import MissingToolError, PortInUseError


def _opt(cmd: list[str], name: str) -> list[str]:
    i = cmd.index(name)
    return cmd[i + 1 : i + 3]


def test_command_choices(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, redis_port=36999, redis_maxmemory="64mb",
                        redis_persist=False)
    cmd = redis_local.command(settings, "/usr/bin/redis-server")
    assert cmd[0] == "/usr/bin/redis-server"
    assert _opt(cmd, "--bind")[0] == "127.0.0.1"
    assert _opt(cmd, "--port")[0] == "36999"
    assert _opt(cmd, "--save")[0] == ""  # no RDB snapshots
    assert _opt(cmd, "--appendonly")[0] == "no"
    assert _opt(cmd, "--daemonize")[0] == "no"  # the process helper supervises it
    assert _opt(cmd, "--maxmemory")[0] == "64mb"
    assert _opt(cmd, "--maxmemory-policy")[0] == "volatile-lru"  # ledgers never evicted
    assert _opt(cmd, "--dir")[0] == str(tmp_path / "redis")


def test_persistence_is_on_by_default_for_the_ledger(tmp_path: Path) -> None:
    cmd = redis_local.command(Settings(state_dir=tmp_path))
    assert _opt(cmd, "--appendonly") == ["yes", "--appendfsync"]


def test_missing_redis_server_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(MissingToolError, match="apt-get install -y redis-server"):
        redis_local.start(Settings(state_dir=tmp_path))


def test_port_in_use_is_reported_before_starting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_local, "require", lambda _name: "/nonexistent/redis-server")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(PortInUseError, match="CLAWSTREAM_REDIS_PORT"):
            redis_local.start(Settings(state_dir=tmp_path, redis_port=port))
    assert not (tmp_path / "run" / "redis.pid").exists()
