"""A local Ray head node (``ray start --head --block``) and the Serve app on it.

Why ``--block`` under our own supervisor instead of a plain ``ray start``: ``ray stop`` has
no way to name a cluster; it stops every Ray process of the machine, including another
developer's or another test stack's. Started with ``--block`` in a session of its own, the
``ray start`` process stays up as the parent of the cluster's daemons, so stopping *our*
cluster is "signal our session": SIGTERM to everything in it, SIGKILL what is left after the
grace period. ``ray stop`` is never called. Daemons that moved to their own process group
are still found by session id (see ``clawstream.deploy.local.process``).

Ray binds its GCS and raylet on all interfaces and advertises the machine's address, not
127.0.0.1, even with ``--node-ip-address 127.0.0.1`` (it resolves loopback to the node IP on
purpose, for multi-node clusters); drivers still connect with ``127.0.0.1:<ray_port>``.

Ports: the GCS listens on ``ray_port`` (6390, not Ray's 6379, which is Redis's). Ray's
fixed-by-default auxiliary ports (client server 10001, dashboard agent 52365) are given free
ports picked at start, so two stacks on one machine do not fight over them.
The temp dir is ``/tmp/clawstream-ray-<ray_port>``: per cluster (logs and sockets never mix
with another cluster's ``/tmp/ray/session_latest``) and short (Unix socket paths must stay under 108
bytes, which a deep state dir would break).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from clawstream.config import Settings
from clawstream.deploy.local.env import child_env
from clawstream.deploy.local.errors import NotReadyError, StackError
from clawstream.deploy.local.ports import ensure_ports_free, free_port, port_accepts
from clawstream.deploy.local.process import Processes, ProcessInfo
from clawstream.deploy.local.tools import venv_script
from clawstream.deploy.local.wait import wait_for

NAME = "ray"
READY_TIMEOUT_S = 90.0
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    # On SIGTERM, `ray start --block` first drains the node for up to 30 s so Kubernetes can
    # move Serve replicas elsewhere. A single local node has nowhere to move them to.
    "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
    # Serve's request path on a 2-core machine (docs/benchmarks.md, throughput): user code
    # and the router on the replica's own event loop instead of a thread each, so a call
    # is not handed across threads twice per process; no per-request log lines on stderr.
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    "RAY_SERVE_LOG_TO_STDERR": "0",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
    # Idle footprint: no Python workers started ahead of the first driver (the deploy
    # driver needs none; the replicas start their own).
    "RAY_prestart_worker_first_driver": "0",
    # Ray 2.60's `ray start` turns token authentication on by itself when a token file
    # exists in the user's home (~/.ray/auth_token, which any local `ray.init()` without an
    # address leaves behind), while a driver that connects by address stays in the mode it
    # read when it imported ray: unset, so no token, and every driver is refused
    # ("Failed to connect to Ray cluster"). The mode is this stack's choice, not the home's.
    "RAY_AUTH_MODE": "disabled",
}
STOP_TIMEOUT_S = 30.0
DEPLOY_MODULE = "clawstream.inference.deploy"
DEPLOY_PROCESS_TIMEOUT_S = 240.0
"""Past the deploy's own deadline (``inference.deploy.DEPLOY_TIMEOUT_S``, 180 s): that one
reports why; this one only ends a driver that hangs."""
_DEPLOY_TAIL = 4000


def temp_dir(settings: Settings) -> Path:
    """Ray's root temp dir for this cluster (short on purpose, see the module docstring)."""
    return Path(tempfile.gettempdir()) / f"clawstream-ray-{settings.ray_port}"


def _address_file(settings: Settings) -> Path:
    # `ray start` writes the GCS address here once the head node is fully up.
    return temp_dir(settings) / "ray_current_cluster"


def command(settings: Settings, ray: str, *, client_port: int, agent_port: int) -> list[str]:
    """The ``ray start`` command line for the head node of this stack.

    Only what a local Serve cluster uses runs: no log monitor (no driver reads replica
    logs; they stay in the session's log files), no autoscaler monitor (one fixed node),
    no dashboard UI. The Ray Client server cannot be left out while its dependency (grpc)
    is installed, which Serve needs: it gets a free port.
    """
    return [
        ray,
        "start",
        "--head",
        "--block",
        "--port",
        str(settings.ray_port),
        "--num-cpus",
        str(settings.ray_num_cpus),
        "--object-store-memory",
        str(settings.ray_object_store_mb * 1024 * 1024),
        "--include-dashboard",
        "false",
        "--include-log-monitor",
        "false",
        "--no-monitor",
        "--disable-usage-stats",
        "--temp-dir",
        str(temp_dir(settings)),
        "--ray-client-server-port",
        str(client_port),
        "--dashboard-agent-listen-port",
        str(agent_port),
        "--metrics-export-port",
        str(settings.ray_metrics_port),
        "--log-style",
        "record",
        "--log-color",
        "false",
    ]


def is_ready(settings: Settings) -> bool:
    """True if the head node finished starting (address file written, GCS port open)."""
    return _address_file(settings).is_file() and port_accepts(settings.ray_port)


def start(
    settings: Settings,
    *,
    timeout: float = READY_TIMEOUT_S,
    note: Callable[[str], None] | None = None,
) -> ProcessInfo:
    """Start the Ray head node unless it runs, and wait until it accepts drivers. Idempotent."""
    procs = Processes(settings.run_dir, settings.log_dir)
    info = procs.info(NAME)
    if info is None:
        procs.reclaim(NAME)  # leftovers of a crash may hold our ports
        ray = venv_script("ray")
        ensure_ports_free(
            {"ray_port": settings.ray_port, "serve_http_port": settings.serve_http_port,
             "ray_metrics_port": settings.ray_metrics_port},
            component=NAME,
        )
        temp_dir(settings).mkdir(parents=True, exist_ok=True)
        _address_file(settings).unlink(missing_ok=True)
        argv = command(settings, ray, client_port=free_port(), agent_port=free_port())
        env = child_env(settings, RAY_ENV, role="inference")
        info = procs.start(NAME, argv, env=env, cwd=Path.cwd())

    def died() -> str | None:
        return None if procs.is_running(NAME) else "`ray start` exited"

    reason = wait_for(lambda: is_ready(settings), timeout=timeout, interval=0.25, abort=died)
    if reason is not None:
        raise NotReadyError(
            f"ray head on {settings.ray_address}: {reason}. Log {procs.log_file(NAME)} "
            f"ends with:\n{procs.tail(NAME)}\n(more in {temp_dir(settings)}/session_latest/logs)"
        )
    return info


def deploy_serve(settings: Settings) -> None:
    """Deploy the Serve app onto the running cluster (blocks until it answers health).

    From a driver process of its own (``python -m clawstream.inference.deploy``, the
    settings as JSON on stdin), never from this one. A process keeps Ray and Serve state
    from every cluster it was a driver of: Serve caches its controller's handle by job id,
    and the first job of a fresh cluster has the id the first job of the previous one had,
    so the second stack brought up by one process (the tests' side stacks) was deployed
    through the dead controller of the first ("a Ray object whose owner is unknown"). A
    fresh process also reads the stack's Ray auth mode, not the one this process imported.
    """
    if not is_ready(settings):
        raise StackError(f"Ray is not running on {settings.ray_address}; start it first")
    try:
        done = subprocess.run(
            [sys.executable, "-m", DEPLOY_MODULE], input=settings.model_dump_json(),
            env=child_env(settings, RAY_ENV, role="inference"), capture_output=True, text=True,
            timeout=DEPLOY_PROCESS_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise StackError(f"the Serve deploy did not end in {DEPLOY_PROCESS_TIMEOUT_S:.0f} s"
                         ) from exc
    if done.returncode != 0:
        said = (done.stderr.strip() or done.stdout.strip() or "no output")[-_DEPLOY_TAIL:]
        raise StackError(f"the Serve deploy failed (exit {done.returncode}): {said}")


def serve_is_ready(settings: Settings, timeout: float = 1.0) -> bool:
    """True if the Serve HTTP proxy answers its health route."""
    import httpx

    try:
        response = httpx.get(f"{settings.serve_url}/-/healthz", timeout=timeout)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def stop(settings: Settings, timeout: float = STOP_TIMEOUT_S) -> bool:
    """Stop this stack's cluster only (its session), never other Ray clusters."""
    return Processes(settings.run_dir, settings.log_dir).stop(NAME, timeout)


def purge(settings: Settings) -> None:
    """Delete this cluster's Ray temp dir (logs, spilled objects). Stop it first."""
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(temp_dir(settings))
