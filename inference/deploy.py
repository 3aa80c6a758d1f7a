"""Put the inference app onto an already running Ray cluster and return once it answers.

The local stack starts Ray (``ray start --head``) and then runs this module as a process
of its own (:func:`main`), which calls :func:`deploy`. The driver only submits the app: it
disconnects at the end and the app stays in the cluster, owned by Serve's detached
controller.
"""

from __future__ import annotations

import logging
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from clawstream.inference.config import InferenceConfig
from clawstream.inference.embeddings import OFFLINE_ENV

if TYPE_CHECKING:
    from clawstream.config import Settings

DEPLOY_TIMEOUT_S = 180.0
_POLL_INTERVAL_S = 0.5
_MAX_DETAIL_CHARS = 3000  # replica tracebacks can be long; their end says why
_PACKAGE_DIR = Path(__file__).resolve().parent


class InferenceDeployError(RuntimeError):
    """The Serve app could not be deployed, or did not become healthy in time."""


def job_runtime_env() -> dict[str, Any]:
    """The driver job's runtime_env, which Serve hands to every replica of the app.

    Ray workers import deployment classes by module name. Shipping this checkout's
    ``inference`` package (a few KB, uploaded to the cluster by ``ray.init``) means
    replicas run exactly the code the driver deployed, whether or not clawstream is
    installed, or installed stale, in the interpreter that ``ray start`` used. The
    offline variables keep the embedding replica off the Hugging Face hub.
    """
    return {"py_modules": [str(_PACKAGE_DIR)], "env_vars": dict(OFFLINE_ENV)}


def deploy(settings: Settings, timeout_s: float = DEPLOY_TIMEOUT_S) -> None:
    """Deploy (or redeploy) the app and block until ``GET /health`` answers 200.

    Raises :class:`InferenceDeployError` with the reason (Serve's deploy failure message,
    or the last health answer) when the app fails or the deadline passes.
    """
    import ray
    from ray import serve
    from ray.serve.schema import LoggingConfig

    from clawstream.inference.app import ALL_APP_NAMES, ROUTE_PREFIXES, build_apps

    config = InferenceConfig.from_settings(settings)
    deadline = time.monotonic() + timeout_s
    _require_cluster(settings.ray_address)
    _connect_driver(lambda: ray.init(
        address=settings.ray_address,
        log_to_driver=False,
        logging_level=logging.WARNING,
        configure_logging=False,
        runtime_env=job_runtime_env(),
    ), settings.ray_address)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": settings.serve_http_port},
                    # The proxy and the controller: no access log line per request.
                    logging_config=LoggingConfig(enable_access_log=False,
                                                 log_level="WARNING"))
        apps = build_apps(config)
        serve.run_many(
            [serve.RunTarget(target=app, name=name, route_prefix=ROUTE_PREFIXES[name])
             for name, app in apps.items()],
            wait_for_ingress_deployment_creation=False,
            wait_for_applications_running=False,
        )
        # An app an earlier deploy had and this one does not (the upstream app, once no
        # pool names an upstream) would keep its route and replicas: remove it.
        for name in set(ALL_APP_NAMES) - set(apps):
            if name in serve.status().applications:
                serve.delete(name)
        _wait_healthy(settings.serve_url, tuple(apps), deadline, timeout_s)
    finally:
        ray.shutdown()


def _connect_driver(connect: Callable[[], object], address: str) -> None:
    """Connect this process as a driver; Ray's "Failed to connect to Ray cluster" hides
    its reason (a wrong auth token, no node found) in the chained exception."""
    try:
        connect()
    except ConnectionError as exc:
        reason = f"{exc} ({exc.__cause__})" if exc.__cause__ else str(exc)
        raise InferenceDeployError(
            f"could not connect to the Ray cluster at {address} as a driver: {reason}"
        ) from exc


def _require_cluster(address: str) -> None:
    """Fail in seconds rather than minutes: ray.init retries a dead address for >2 min."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=3.0):
            pass
    except OSError as exc:
        raise InferenceDeployError(
            f"no Ray cluster answers at {address} ({exc}); start one first "
            f"(ray start --head --port {port}) or fix CLAWSTREAM_RAY_PORT"
        ) from exc


def _serve_verdict(app_names: tuple[str, ...]) -> str:
    """Serve's view of the apps: "RUNNING" when all run, else the first that does not:
    "DEPLOYING", "DEPLOY_FAILED: why", …

    Checked besides /health because on a redeploy the old version keeps answering
    /health until Serve has replaced it, and because a crashing replica should fail the
    deploy at once instead of running down the deadline.
    """
    from ray import serve

    try:
        applications = serve.status().applications
    except Exception as exc:
        # Right after a redeploy the controller can briefly fail to describe the old
        # version; that is "no verdict yet", not a failure.
        return f"UNKNOWN ({type(exc).__name__})"
    for name in app_names:
        app_status = applications.get(name)
        if app_status is None:
            return f"NOT_FOUND ({name})"
        status = str(getattr(app_status.status, "value", app_status.status))
        if status == "DEPLOY_FAILED":
            return f"DEPLOY_FAILED: {name}: {app_status.message}"
        if status != "RUNNING":
            return status
    return "RUNNING"


def _app_status_line(app_names: tuple[str, ...]) -> str:
    from ray import serve

    try:
        status = serve.status()
    except Exception as exc:
        return f"serve.status() failed: {exc!r}"
    proxies = ", ".join(str(getattr(p, "value", p)) for p in status.proxies.values())
    parts = [f"proxies [{proxies or 'none'}]"]
    for app_name in app_names:
        app_status = status.applications.get(app_name)
        if app_status is None:
            parts.append(f"app {app_name} not known to Serve")
            continue
        parts.append(f"app {app_name} {getattr(app_status.status, 'value', app_status.status)}")
        for name, dep in app_status.deployments.items():
            dep_status = getattr(dep.status, "value", dep.status)
            parts.append(f"{name}: {dep_status} {dep.message}".strip())
    return "; ".join(parts)


def _wait_healthy(base_url: str, app_names: tuple[str, ...], deadline: float,
                  timeout_s: float) -> None:
    last = "no answer yet"
    with httpx.Client(base_url=base_url, timeout=5.0) as http:
        while True:
            verdict = _serve_verdict(app_names)
            if verdict.startswith("DEPLOY_FAILED"):
                raise InferenceDeployError(
                    f"Serve could not deploy the inference app: {verdict}; "
                    f"{_app_status_line(app_names)[-_MAX_DETAIL_CHARS:]}"
                )
            if verdict == "RUNNING":
                try:
                    response = http.get("/health")
                    if response.status_code == 200:
                        return
                    last = f"HTTP {response.status_code}: {response.text[:300]}"
                except httpx.HTTPError as exc:
                    last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                raise InferenceDeployError(
                    f"inference app not healthy at {base_url}/health after {timeout_s:.0f} s; "
                    f"last /health answer: {last}; Serve says: {_app_status_line(app_names)} "
                    "(a Serve already running in this cluster keeps the HTTP port it was "
                    "started with)"
                )
            time.sleep(_POLL_INTERVAL_S)


def main() -> int:
    """``python -m clawstream.inference.deploy``, the settings as JSON on stdin: the local
    stack deploys from a driver process of its own (``ray_cluster.deploy_serve`` says
    why). The reason of a failed deploy is the last line on stderr."""
    from clawstream.config import Settings

    settings = Settings.model_validate_json(sys.stdin.read())
    try:
        deploy(settings)
    except InferenceDeployError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
