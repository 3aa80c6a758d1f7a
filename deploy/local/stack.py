"""The local stack as one unit: ``up``, ``down``, ``status``.

Start order follows dependencies, not a list: Redis, the Kafka broker, the schema registry
and the Ray head node need nothing from each other and start concurrently (the JVMs and Ray
each spend seconds starting, and the machine has cores to spare while they wait on I/O);
once Kafka answers the topics are created (and existing ones get the retention the settings
say); the Faust workers start once Redis and the topics are ready, while the Serve app
deploys onto Ray (model loading is the slowest step, and workers do not need it to join
their group).
``down`` stops the gateway and the workers first, so they commit offsets and leave their
group while the broker still runs, then everything else at once. The gateway itself is
started by the caller once the topics exist (``clawstream up``), see
``clawstream.deploy.local.gateway``.

Every step is idempotent: ``up`` on a running stack only probes it, ``down`` on a stopped
one does nothing. The library prints nothing; pass ``progress`` (e.g. ``RichProgress()``)
to see the steps.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from clawstream.config import Settings
from clawstream.deploy.local import (
    code_version,
    credentials,
    gateway,
    kafka,
    prometheus,
    ray_cluster,
    redis,
    schema_registry,
    worker,
)
from clawstream.deploy.local.errors import StackError
from clawstream.deploy.local.ports import port_holder, port_is_free
from clawstream.deploy.local.process import Processes, ProcessInfo
from clawstream.streams import kafka_access
from clawstream.streams.admin import ensure_topics
from clawstream.streams.schema_registry import RegistryClient, register_all

Progress = Callable[[str, str], None]
"""``progress(component, message)``: one line about one component's step."""


@dataclass(frozen=True)
class ComponentStatus:
    """One row of ``status``: ``running`` means "answers its readiness probe"."""

    name: str
    running: bool
    pid: int | None
    address: str
    detail: str


class RichProgress:
    """A ``Progress`` that prints timed lines on a rich console (stderr by default)."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.t0 = time.monotonic()

    def __call__(self, component: str, message: str) -> None:
        elapsed = time.monotonic() - self.t0
        self.console.print(
            f"[dim]{elapsed:6.1f}s[/dim] [bold cyan]{component:<9}[/bold cyan] {message}",
            highlight=False,
        )


def _quiet(_component: str, _message: str) -> None:
    return None


def _step(say: Progress, name: str, address: str, run: Callable[[], ProcessInfo]) -> ProcessInfo:
    t = time.monotonic()
    say(name, "starting")
    info = run()
    took = time.monotonic() - t
    how = "ready" if info.started else "already running, ready"
    say(name, f"{how} on {address} (pid {info.pid}, {took:.1f} s)")
    return info


def up(
    settings: Settings,
    with_workers: bool = True,
    with_inference: bool = True,
    progress: Progress | None = None,
    redeploy: bool = False,
) -> list[ComponentStatus]:
    """Start the stack (idempotent) and return its status; StackError names what failed.

    The Serve app is deployed when Ray was just started, when it does not answer health,
    or with ``redeploy`` (to pick up changed inference code without restarting Ray).

    A component that fails does not stop the others from starting; the error lists every
    failure, and ``down`` cleans up whatever did start.
    """
    say = progress or _quiet
    if settings.auth:
        _prepare_credentials(settings, say)
    # This process acts as the admin: it creates topics, users and ACLs.
    kafka_access.bind(credentials.as_role(settings, credentials.ADMIN))
    errors: dict[str, BaseException] = {}
    version = code_version.current()
    redeploy = _restart_other_code(settings, version, say) or redeploy

    def note(name: str) -> Callable[[str], None]:
        return lambda message: say(name, message)

    with ThreadPoolExecutor(max_workers=7, thread_name_prefix="clawstream-up") as pool:
        f_redis = pool.submit(
            _step,
            say,
            "redis",
            f"127.0.0.1:{settings.redis_port}",
            lambda: redis.start(settings, note=note("redis")),
        )
        f_kafka = pool.submit(
            _step,
            say,
            "kafka",
            settings.bootstrap_servers,
            lambda: kafka.start(settings, note=note("kafka")),
        )
        f_ray: Future[ProcessInfo] | None = None
        if with_inference:
            f_ray = pool.submit(
                _step,
                say,
                "ray",
                settings.ray_address,
                lambda: ray_cluster.start(settings, note=note("ray")),
            )
        f_prometheus: Future[ProcessInfo] | None = None
        if settings.prometheus_enabled:
            f_prometheus = pool.submit(_step, say, "prometheus", prometheus.url(settings),
                                       lambda: prometheus.start(settings))
        f_registry: Future[ProcessInfo] | None = None
        if settings.schema_registry_enabled:
            f_registry = pool.submit(
                _step, say, schema_registry.NAME, settings.schema_registry_url,
                lambda: schema_registry.start(settings, note=note(schema_registry.NAME)))
        f_topics = pool.submit(_topics_step, settings, say, f_kafka)
        f_schemas: Future[None] | None = None
        if f_registry is not None:
            f_schemas = pool.submit(_schemas_step, settings, say, f_registry)
        f_workers: Future[None] | None = None
        if with_workers:
            # Workers start once this release's schemas have their ids: the first records
            # they write are then in the registry's wire format.
            needs: list[Future[Any]] = [f_redis, f_kafka, f_topics]
            if f_schemas is not None:
                needs.append(f_schemas)
            f_workers = pool.submit(_start_workers, settings, say, needs)

        # Serve deploys from this (the main) thread: it makes this process a Ray driver,
        # and Ray expects its driver on the main thread (signal handlers).
        if f_ray is not None:
            try:
                ray_info = f_ray.result()
            except Exception as exc:
                errors["ray"] = exc
            else:
                try:
                    _serve_step(settings, say, fresh_ray=ray_info.started, redeploy=redeploy)
                except Exception as exc:
                    errors["serve"] = exc

        for name, fut in (("redis", f_redis), ("kafka", f_kafka), ("topics", f_topics),
                          ("workers", f_workers), ("prometheus", f_prometheus),
                          (schema_registry.NAME, f_registry), ("schemas", f_schemas)):
            if fut is None:
                continue
            try:
                fut.result()
            except _Skipped:
                pass
            except Exception as exc:
                errors[name] = exc

    if errors:
        for name, error in errors.items():
            say(name, f"[red]failed[/red]: {str(error).splitlines()[0]}")
        detail = "\n\n".join(f"{name}: {error}" for name, error in errors.items())
        raise StackError(
            f"the local stack did not come up ({', '.join(errors)} failed); "
            f"what did start keeps running until `down`.\n\n{detail}"
        )
    code_version.stamp(settings, version)
    return status(settings)


def _prepare_credentials(settings: Settings, say: Progress) -> None:
    """Every role's secret file (written once). A broker formatted before auth has no admin
    login to create users with, so that stack must be purged (or kept with auth off)."""
    first = not credentials.path_of(settings, credentials.ADMIN).is_file()
    if first and (kafka.data_dir(settings) / "meta.properties").is_file():
        raise StackError(
            f"the stack in {settings.state_dir} was started without auth, and its broker "
            "cannot be given an admin login afterwards: `clawstream down --purge` starts it "
            "afresh with auth, CLAWSTREAM_AUTH=false keeps it open")
    credentials.ensure(settings)
    if first:
        say("credentials", "a secret file per role in "
            f"{credentials.path_of(settings, credentials.ADMIN).parent}")


def _restart_other_code(settings: Settings, version: str, say: Progress) -> bool:
    """Stop the workers and the gateway of a stack started by other code (they are started
    again by this ``up``); True when the Serve app must be deployed again too."""
    old = code_version.stamped(settings)
    if old == version:
        return False
    stopped = worker.stop_all(settings)
    if gateway.stop(settings):
        stopped.append("gateway")
    if stopped:
        say("stack", f"was started by other code ({old or 'unstamped'}, now {version}): "
                     f"stopped {', '.join(stopped)} to start them again")
    return True


def _serve_step(settings: Settings, say: Progress, *, fresh_ray: bool, redeploy: bool) -> None:
    if not (redeploy or fresh_ray) and ray_cluster.serve_is_ready(settings):
        say("serve", f"already deployed, healthy on {settings.serve_url}")
        return
    t = time.monotonic()
    say("serve", "deploying the inference app")
    ray_cluster.deploy_serve(settings)
    say("serve", f"ready on {settings.serve_url} ({time.monotonic() - t:.1f} s)")


class _Skipped(StackError):
    """A step not run because one it depends on failed (reported there, not twice)."""


def _topics_step(settings: Settings, say: Progress, kafka_started: Future[ProcessInfo]) -> None:
    """Create missing topics and align the retention of existing ones with the settings,
    before any worker starts (two fresh workers would race to create the changelogs)."""
    if kafka_started.exception() is not None:
        raise _Skipped("topics not checked")
    changes = ensure_topics(settings.bootstrap_servers, settings.partitions, settings.app_id,
                            settings.topic_retention_ms,
                            replication_factor=settings.topic_replication_factor,
                            min_insync_replicas=settings.min_insync_replicas)
    if changes.created:
        say("topics", f"created {', '.join(changes.created)}")
    if settings.auth:
        credentials.apply_kafka(settings)
    for name, (old, new) in changes.retention.items():
        say("topics", f"retention of {name}: {old} -> {new} ms")


def _schemas_step(settings: Settings, say: Progress,
                  registry_started: Future[ProcessInfo]) -> None:
    """Register this release's schemas (``clawstream schemas register``): a change the
    registry refuses as incompatible stops ``up`` here, with the registry's reason."""
    if registry_started.exception() is not None:
        raise _Skipped("schemas not registered")
    client = RegistryClient(settings.schema_registry_url)
    try:
        ids = register_all(client)
    finally:
        client.close()
    say("schemas", f"{len(ids)} registered (ids {min(ids.values())}..{max(ids.values())})")


def _start_workers(settings: Settings, say: Progress, needs: list[Future[Any]]) -> None:
    for dep in needs:
        if dep.exception() is not None:
            say("workers", "skipped: Redis, Kafka, the topics or the schemas failed")
            raise _Skipped("workers not started")
    count = settings.worker_count
    t = time.monotonic()
    say("workers", f"starting {count} worker(s)")
    infos = worker.start_many(settings, count)
    pids = ", ".join(str(i.pid) for i in infos)
    say("workers", f"ready (pids {pids}, {time.monotonic() - t:.1f} s)")


def down(settings: Settings, purge: bool = False, progress: Progress | None = None) -> None:
    """Stop everything this stack runs (workers first); with ``purge``, delete its state.

    ``purge`` removes the state dir (broker data, Redis files, the registry's schemas,
    logs, pid files, worker tables) and this stack's Ray temp dir; the cache of Kafka's
    jars and the registry's app outside it is kept.
    """
    say = progress or _quiet
    if gateway.stop(settings):
        say("gateway", "stopped")
    stopped = worker.stop_all(settings)
    if stopped:
        say("workers", f"stopped {', '.join(stopped)}")

    def stop(name: str, fn: Callable[[Settings], bool]) -> None:
        t = time.monotonic()
        if fn(settings):
            say(name, f"stopped ({time.monotonic() - t:.1f} s)")

    with ThreadPoolExecutor(max_workers=5, thread_name_prefix="clawstream-down") as pool:
        futures = [
            pool.submit(stop, "prometheus", prometheus.stop),
            pool.submit(stop, schema_registry.NAME, schema_registry.stop),
            pool.submit(stop, "ray", ray_cluster.stop),
            pool.submit(stop, "kafka", kafka.stop),
            pool.submit(stop, "redis", redis.stop),
        ]
        for fut in futures:
            fut.result()

    if purge:
        _purge(settings)
        say("state", f"purged {settings.state_dir}")


def _purge(settings: Settings) -> None:
    state = settings.state_dir.resolve()
    if state in (Path("/"), Path.home().resolve()) or Path.cwd().resolve().is_relative_to(state):
        raise StackError(f"refusing to purge {state}: it is not a dedicated state dir")
    procs = Processes(settings.run_dir, settings.log_dir)
    alive = [n for n in procs.names() if procs.is_running(n)]
    if alive:
        raise StackError(f"refusing to purge {state}: still running: {', '.join(alive)}")
    shutil.rmtree(state, ignore_errors=True)
    ray_cluster.purge(settings)


def _port_detail(port: int) -> str:
    if port_is_free(port):
        return "stopped"
    holder = port_holder(port)
    return f"stopped (port {port} held by {holder or 'another process'})"


def _kafka_probe(settings: Settings, node: int) -> Callable[[], bool]:
    return lambda: kafka.is_ready(settings, timeout=1.5, node=node)


def _worker_probe(settings: Settings, index: int) -> Callable[[], bool]:
    return lambda: worker.is_ready(settings, index)


def status(settings: Settings) -> list[ComponentStatus]:
    """Each component: live process, readiness probe answer, address. Quick (probes ~1 s)."""
    procs = Processes(settings.run_dir, settings.log_dir)
    rows: list[ComponentStatus] = []

    def row(name: str, port: int, address: str, probe: Callable[[], bool]) -> None:
        pid = procs.pid(name)
        if pid is None:
            rows.append(ComponentStatus(name, False, None, address, _port_detail(port)))
            return
        ready = probe()
        rows.append(
            ComponentStatus(name, ready, pid, address, "ready" if ready else "not answering")
        )

    row(
        "redis",
        settings.redis_port,
        f"127.0.0.1:{settings.redis_port}",
        lambda: redis.is_ready(settings),
    )
    for node in sorted(set(settings.kafka_nodes) | set(kafka.running_nodes(settings))):
        port = settings.kafka_node_port(node)
        row(kafka.node_name(node), port, f"127.0.0.1:{port}", _kafka_probe(settings, node))
    row("ray", settings.ray_port, settings.ray_address, lambda: ray_cluster.is_ready(settings))

    ray_up = rows[-1].running
    serve_ok = ray_up and ray_cluster.serve_is_ready(settings)
    serve_detail = "healthy" if serve_ok else ("not deployed" if ray_up else "ray is down")
    rows.append(ComponentStatus("serve", serve_ok, None, settings.serve_url, serve_detail))

    row("gateway", settings.gateway_port, settings.gateway_url,
        lambda: gateway.is_ready(settings))
    if settings.prometheus_enabled:
        row("prometheus", settings.prometheus_port, prometheus.url(settings),
            lambda: prometheus.is_ready(settings))
    if settings.schema_registry_enabled:
        row(schema_registry.NAME, settings.schema_registry_port, settings.schema_registry_url,
            lambda: schema_registry.is_ready(settings))

    indices = set(range(settings.worker_count))
    indices |= {worker.index_of(n) for n in worker.running(settings)}
    for i in sorted(indices):
        port = worker.web_port(settings, i)
        row(worker.worker_name(i), port, f"http://127.0.0.1:{port}", _worker_probe(settings, i))
        if worker.has_supervisor_record(settings, i):  # restarts, crash loops: say so
            last = rows[-1]
            rows[-1] = ComponentStatus(last.name, last.running, last.pid, last.address,
                                       f"{last.detail}; {worker.summary(settings, i)}")
    return rows
