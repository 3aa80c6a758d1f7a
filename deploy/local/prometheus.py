"""Debian's ``prometheus`` on loopback, scraping every process of the local stack.

Why a real Prometheus and not a page of our own: the operator's questions (p95 of the last
five minutes, tokens per second, lag per partition) are PromQL over histograms and counters,
and ``clawstream top``, the Grafana dashboard and the tests ask Prometheus itself.

The scrape configuration is generated from the stack's settings, so it follows the ports
(and ``CLAWSTREAM_PORT_OFFSET``) instead of naming them twice: one job per kind of process,
``worker`` (each Faust worker's web port), ``gateway`` and ``serve`` (the metrics agent of
the Ray head node, which serves the Serve app's metrics and Ray's own). The file is JSON,
which is YAML too. Storage lives in the stack's state dir and keeps one day.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

from clawstream.config import Settings
from clawstream.deploy.local import worker
from clawstream.deploy.local.errors import NotReadyError
from clawstream.deploy.local.ports import ensure_ports_free
from clawstream.deploy.local.process import Processes, ProcessInfo
from clawstream.deploy.local.tools import require
from clawstream.deploy.local.wait import wait_for

NAME = "prometheus"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
JOBS = ("worker", "gateway", "serve")
"""The scrape jobs, one per kind of process (the ``job`` label of every series)."""


def data_dir(settings: Settings) -> Path:
    return settings.state_dir / "prometheus"


def url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.prometheus_port}"


def scrape_config(settings: Settings) -> dict[str, Any]:
    """The configuration, from the settings' ports: every process ``up`` starts."""
    interval = f"{settings.prometheus_scrape_interval_s:g}s"
    workers = [f"127.0.0.1:{worker.web_port(settings, i)}"
               for i in range(settings.worker_count)]
    targets = {"worker": workers,
               "gateway": [f"127.0.0.1:{settings.gateway_port}"],
               "serve": [f"127.0.0.1:{settings.ray_metrics_port}"]}
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval,
                   "scrape_timeout": interval},
        "scrape_configs": [{"job_name": job, "metrics_path": "/metrics",
                            "static_configs": [{"targets": targets[job]}]} for job in JOBS],
    }


def command(settings: Settings, binary: str = "prometheus") -> list[str]:
    return [
        binary,
        f"--config.file={data_dir(settings) / 'prometheus.yml'}",
        f"--storage.tsdb.path={data_dir(settings) / 'data'}",
        "--storage.tsdb.retention.time=1d",
        f"--web.listen-address=127.0.0.1:{settings.prometheus_port}",
        "--log.level=warn",
    ]


def is_ready(settings: Settings, timeout: float = 1.0) -> bool:
    """True if Prometheus answers ``/-/ready`` with 200 (config loaded, storage open)."""
    import httpx

    try:
        return httpx.get(f"{url(settings)}/-/ready", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def write_config(settings: Settings) -> bool:
    """Write the scrape config from the settings; True if it changed."""
    path = data_dir(settings) / "prometheus.yml"
    text = json.dumps(scrape_config(settings), indent=2)
    if path.is_file() and path.read_text() == text:
        return False
    (data_dir(settings) / "data").mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return True


def start(settings: Settings, *, timeout: float = READY_TIMEOUT_S) -> ProcessInfo:
    """Write the scrape config, start Prometheus unless it runs (a running one whose
    targets changed, say another worker count, reloads it on SIGHUP), wait until ready."""
    procs = Processes(settings.run_dir, settings.log_dir)
    info = procs.info(NAME)
    changed = write_config(settings)
    if info is None:
        procs.reclaim(NAME)
        binary = require("prometheus")
        ensure_ports_free({"prometheus_port": settings.prometheus_port}, component=NAME)
        info = procs.start(NAME, command(settings, binary))
    elif changed:
        os.kill(info.pid, signal.SIGHUP)

    def died() -> str | None:
        return None if procs.is_running(NAME) else "prometheus exited"

    reason = wait_for(lambda: is_ready(settings), timeout=timeout, interval=0.2, abort=died)
    if reason is not None:
        raise NotReadyError(f"prometheus on {url(settings)}: {reason}. Log "
                            f"{procs.log_file(NAME)} ends with:\n{procs.tail(NAME)}")
    return info


def stop(settings: Settings, timeout: float = STOP_TIMEOUT_S) -> bool:
    return Processes(settings.run_dir, settings.log_dir).stop(NAME, timeout)
