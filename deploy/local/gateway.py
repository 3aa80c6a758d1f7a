"""The HTTP gateway of the stack, detached: ``python -m clawstream.gateway.main``.

It needs Kafka (its answer index pins the answer and event topics' ends, so the topics
must exist) and Redis (API keys, request records); ``up`` starts it after both and after
the topics are created. Readiness is ``GET /ready`` answering 200 (index, recorder and
producer running), not the port opening.
"""

from __future__ import annotations

import sys
from pathlib import Path

from clawstream.config import Settings
from clawstream.deploy.local.env import child_env
from clawstream.deploy.local.errors import NotReadyError
from clawstream.deploy.local.ports import ensure_ports_free
from clawstream.deploy.local.process import Processes, ProcessInfo
from clawstream.deploy.local.wait import wait_for

NAME = "gateway"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


def command() -> list[str]:
    return [sys.executable, "-m", "clawstream.gateway.main"]


def _procs(settings: Settings) -> Processes:
    return Processes(settings.run_dir, settings.log_dir)


def is_ready(settings: Settings, timeout: float = 1.0) -> bool:
    """True if the gateway answers ``GET /ready`` with 200."""
    import httpx

    try:
        return httpx.get(f"{settings.gateway_url}/ready", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def start(settings: Settings, *, wait: bool = True, timeout: float = READY_TIMEOUT_S
          ) -> ProcessInfo:
    """Start the gateway unless it runs; with ``wait``, block until it is ready."""
    procs = _procs(settings)
    info = procs.info(NAME)
    if info is None:
        procs.reclaim(NAME)
        ensure_ports_free({"gateway_port": settings.gateway_port}, component=NAME)
        info = procs.start(NAME, command(), env=child_env(settings, role="gateway"), cwd=Path.cwd())
    if wait:
        reason = wait_for(lambda: is_ready(settings), timeout=timeout, interval=0.2,
                          abort=lambda: None if procs.is_running(NAME) else f"{NAME} exited")
        if reason is not None:
            raise NotReadyError(f"{NAME} ({settings.gateway_url}): {reason}. Log "
                                f"{procs.log_file(NAME)} ends with:\n{procs.tail(NAME)}")
    return info


def stop(settings: Settings, timeout: float = STOP_TIMEOUT_S) -> bool:
    """Graceful stop (SIGTERM: uvicorn finishes open responses, up to 5 s)."""
    return _procs(settings).stop(NAME, timeout)


def kill(settings: Settings) -> bool:
    """SIGKILL the gateway (a crash). For tests."""
    return _procs(settings).kill(NAME)


def pid(settings: Settings) -> int | None:
    return _procs(settings).pid(NAME)
