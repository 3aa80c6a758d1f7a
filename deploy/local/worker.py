"""Faust workers of the stack, detached:
``python -m clawstream.processors.main worker --name NAME``.

Workers are numbered: worker ``i`` is named ``worker-<i>`` and serves its web endpoints on
``worker_web_port + i``, so several run side by side in one consumer group (that is how the
stack scales on one machine, and how tests kill one and watch the others take over).
The port reaches the worker as ``CLAWSTREAM_WORKER_WEB_PORT``, on top of every other setting
of the stack (see ``clawstream.deploy.local.env``), so a test stack's workers talk to the
test broker.

Readiness is ``GET /ready`` answering 200 (the worker says it joined the group and
recovered its tables), not the web port opening, which happens long before that.

Each worker runs under its own supervisor (``supervisor.py``), which starts it again when
it exits on a failure: ``start`` starts the supervisor, ``stop`` stops the supervisor
(which stops its worker gracefully first), ``kill`` SIGKILLs only the worker, as a crash
would, and its supervisor brings it back.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from clawstream.config import Settings
from clawstream.deploy.local.env import child_env
from clawstream.deploy.local.errors import NotReadyError
from clawstream.deploy.local.ports import ensure_ports_free
from clawstream.deploy.local.process import Processes, ProcessInfo
from clawstream.deploy.local.supervision import name as supervisor_process
from clawstream.deploy.local.supervision import read_state
from clawstream.deploy.local.wait import wait_for

PREFIX = "worker-"
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
SUPERVISOR_GRACE_S = 10.0  # beyond the worker's own stop timeout


def worker_name(index: int) -> str:
    return f"{PREFIX}{index}"


def web_port(settings: Settings, index: int) -> int:
    return settings.worker_web_port + index


def command(name: str) -> list[str]:
    return [sys.executable, "-m", "clawstream.processors.main", "worker", "--name", name]


def worker_env(settings: Settings, index: int) -> dict[str, str]:
    """Inherited environment + the stack's settings + this worker's own web port."""
    return child_env(settings, {"CLAWSTREAM_WORKER_WEB_PORT": str(web_port(settings, index))},
                     role="worker")


def is_ready(settings: Settings, index: int, timeout: float = 1.0) -> bool:
    """True if worker ``index`` answers ``GET /ready`` with 200."""
    import httpx

    url = f"http://127.0.0.1:{web_port(settings, index)}/ready"
    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


SUPERVISOR_MODULE = "clawstream.deploy.local.supervisor"


def supervisor_name(index: int) -> str:
    return supervisor_process(index)


def supervisor_command(index: int) -> list[str]:
    return [sys.executable, "-m", SUPERVISOR_MODULE, str(index)]


def spawn(settings: Settings, index: int) -> ProcessInfo:
    """Start worker ``index`` itself, detached, unless it runs (its supervisor calls this)."""
    procs = Processes(settings.run_dir, settings.log_dir)
    name = worker_name(index)
    info = procs.info(name)
    if info is not None:
        return info
    procs.reclaim(name)  # leftovers of a crash may hold our port
    ensure_ports_free({"worker_web_port": web_port(settings, index)}, component=name)
    return procs.start(name, command(name), env=worker_env(settings, index), cwd=Path.cwd())


def start(
    settings: Settings,
    index: int = 0,
    *,
    wait: bool = True,
    timeout: float = READY_TIMEOUT_S,
    note: Callable[[str], None] | None = None,
) -> ProcessInfo:
    """Start worker ``index`` under its supervisor unless that runs; with ``wait``, block
    until the worker is ready. Returns the supervisor's process."""
    procs = Processes(settings.run_dir, settings.log_dir)
    sup = supervisor_name(index)
    info = procs.info(sup)
    if info is None:
        info = procs.start(sup, supervisor_command(index), env=child_env(settings, role="worker"),
                           cwd=Path.cwd())
    if wait:
        wait_ready(settings, index, timeout=timeout)
    return info


def wait_ready(settings: Settings, index: int, timeout: float = READY_TIMEOUT_S) -> None:
    procs = Processes(settings.run_dir, settings.log_dir)
    name = worker_name(index)

    def died() -> str | None:
        if procs.is_running(name) or procs.is_running(supervisor_name(index)):
            return None
        return f"{name} exited and its supervisor is not running ({summary(settings, index)})"

    reason = wait_for(lambda: is_ready(settings, index), timeout=timeout, interval=0.5, abort=died)
    if reason is not None:
        raise NotReadyError(
            f"{name} (web port {web_port(settings, index)}): {reason}. "
            f"Log {procs.log_file(name)} ends with:\n{procs.tail(name)}"
        )


def has_supervisor_record(settings: Settings, index: int) -> bool:
    return read_state(settings, index) is not None


def summary(settings: Settings, index: int) -> str:
    """What the worker's supervisor says (state, restarts, last exit), for ``status``."""
    state = read_state(settings, index)
    return "no supervisor record" if state is None else state.summary()


def start_many(
    settings: Settings, count: int, *, timeout: float = READY_TIMEOUT_S
) -> list[ProcessInfo]:
    """Start workers ``0..count-1`` at once, then wait for all (they join one group)."""
    infos = [start(settings, i, wait=False) for i in range(count)]
    for i in range(count):
        wait_ready(settings, i, timeout=timeout)
    return infos


def running(settings: Settings) -> list[str]:
    """Names of the workers that have a live process, in index order."""
    procs = Processes(settings.run_dir, settings.log_dir)
    names = [n for n in procs.names() if n.startswith(PREFIX) and procs.is_running(n)]
    return sorted(names, key=index_of)


def index_of(name: str) -> int:
    suffix = name.removeprefix(PREFIX)
    return int(suffix) if suffix.isdigit() else 1_000_000


def stop(settings: Settings, index: int, timeout: float = STOP_TIMEOUT_S) -> bool:
    """Graceful stop: the supervisor SIGTERMs the worker (it drains, commits offsets and
    leaves the group) and exits; a worker without a supervisor gets the SIGTERM directly."""
    procs = Processes(settings.run_dir, settings.log_dir)
    supervised = procs.stop(supervisor_name(index), timeout + SUPERVISOR_GRACE_S)
    return procs.stop(worker_name(index), timeout) or supervised


def pid(settings: Settings, index: int) -> int | None:
    """The pid of worker ``index`` if it runs."""
    return Processes(settings.run_dir, settings.log_dir).pid(worker_name(index))


def log_file(settings: Settings, index: int) -> Path:
    return Processes(settings.run_dir, settings.log_dir).log_file(worker_name(index))


def kill(settings: Settings, index: int) -> bool:
    """SIGKILL worker ``index`` (a crash: no commit, no leave-group). For tests."""
    return Processes(settings.run_dir, settings.log_dir).kill(worker_name(index))


def stop_all(settings: Settings, timeout: float = STOP_TIMEOUT_S) -> list[str]:
    """Stop every supervisor and worker (all get SIGTERM at once, then each is waited for);
    the names of the workers that ran."""
    procs = Processes(settings.run_dir, settings.log_dir)
    names = running(settings)
    indices = {index_of(n) for n in names} | {
        int(n.removeprefix("supervisor-")) for n in procs.names()
        if n.startswith("supervisor-") and n.removeprefix("supervisor-").isdigit()}
    with ThreadPoolExecutor(max_workers=max(1, len(indices))) as pool:
        list(pool.map(lambda i: stop(settings, i, timeout), sorted(indices)))
    return names
