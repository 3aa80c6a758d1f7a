"""A Ray token in the user's home does not lock the stack's drivers out of its cluster.

Ray 2.60's ``ray start`` turns token authentication on by itself when ``~/.ray/auth_token``
exists (any local ``ray.init()`` without an address leaves one behind), and a driver that
connects by address, in the mode it read when it imported ray, is then refused. A CI run
lost its whole integration suite to it: the machine had such a token, and every ``up``
failed to deploy Serve with "Failed to connect to Ray cluster".
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from clawstream.config import Settings
from clawstream.deploy.local import ray_cluster

pytestmark = pytest.mark.integration

DRIVER = """
import logging, sys, ray
ray.init(address=sys.argv[1], log_to_driver=False, logging_level=logging.WARNING)
print("nodes", len(ray.nodes()))
"""


def test_a_ray_token_in_the_home_does_not_lock_the_drivers_out(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(uuid.uuid4().hex)
    monkeypatch.setenv("HOME", str(home))  # `ray start` and the driver both see the token
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    offset = int(os.environ.get("CLAWSTREAM_PORT_OFFSET", "0"))
    settings = Settings(state_dir=tmp_path / "state", ray_port=26572 + offset,  # its own
                        ray_metrics_port=26672 + offset, serve_http_port=28172 + offset)
    try:
        ray_cluster.start(settings)
        driver = subprocess.run([sys.executable, "-c", DRIVER, settings.ray_address],
                                capture_output=True, text=True, timeout=180, check=False)
    finally:
        ray_cluster.stop(settings)
    assert driver.returncode == 0, driver.stderr[-2000:]
    assert "nodes 1" in driver.stdout
