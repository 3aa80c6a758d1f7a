"""The ``ray start`` command line of the stack's head node (no cluster started here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from clawstream.config import Settings
from clawstream.deploy.local import ray_cluster


def test_command(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, ray_port=36490, ray_num_cpus=2)
    cmd = ray_cluster.command(settings, "ray", client_port=40001, agent_port=40002)
    assert cmd[:4] == ["ray", "start", "--head", "--block"]  # --block: we own the processes
    assert cmd[cmd.index("--port") + 1] == "36490"
    assert cmd[cmd.index("--num-cpus") + 1] == "2"
    assert cmd[cmd.index("--include-dashboard") + 1] == "false"
    assert "--disable-usage-stats" in cmd
    assert cmd[cmd.index("--ray-client-server-port") + 1] == "40001"
    assert cmd[cmd.index("--include-log-monitor") + 1] == "false"
    assert "--no-monitor" in cmd
    assert cmd[cmd.index("--dashboard-agent-listen-port") + 1] == "40002"
    assert cmd[cmd.index("--temp-dir") + 1] == str(ray_cluster.temp_dir(settings))


def test_temp_dir_is_per_cluster_and_short(tmp_path: Path) -> None:
    a = ray_cluster.temp_dir(Settings(state_dir=tmp_path, ray_port=36490))
    b = ray_cluster.temp_dir(Settings(state_dir=tmp_path, ray_port=36491))
    assert a != b
    # Ray puts sockets at <temp>/session_<date>_<pid>/sockets/plasma_store (~62 chars more);
    # Unix socket paths must fit in 107 bytes.
    assert len(str(a)) + 62 < 107


def test_no_drain_wait_on_stop() -> None:
    assert ray_cluster.RAY_ENV["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] == "0"


def test_not_ready_without_a_cluster(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, ray_port=36492, serve_http_port=38492)
    assert not ray_cluster.is_ready(settings)
    assert not ray_cluster.serve_is_ready(settings)


def test_a_driver_that_cannot_connect_names_rays_hidden_reason() -> None:
    from clawstream.inference import deploy

    def connect() -> None:
        try:
            raise RuntimeError("InvalidAuthToken: Authentication token is missing")
        except RuntimeError as cause:
            raise ConnectionError("Failed to connect to Ray cluster at x") from cause

    with pytest.raises(deploy.InferenceDeployError, match="InvalidAuthToken"):
        deploy._connect_driver(connect, "127.0.0.1:1")


def test_the_cluster_never_takes_its_auth_mode_from_the_users_home() -> None:
    # Ray 2.60 turns token auth on when ~/.ray/auth_token exists and the mode is unset;
    # tests/integration/test_ray_auth.py shows what that does to our drivers.
    assert ray_cluster.RAY_ENV["RAY_AUTH_MODE"] == "disabled"
