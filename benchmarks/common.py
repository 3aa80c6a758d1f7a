"""What every benchmark shares: its own stack (ports, state dir), percentiles, the console.

Benchmarks run on a side stack so a developer's stack and the test stack stay untouched;
``CLAWSTREAM_PORT_OFFSET`` moves it when two checkouts benchmark at once.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console

from clawstream.config import Settings
from clawstream.deploy.local.env import isolated_env

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_ENV = {
    **isolated_env(REPO_ROOT / ".clawstream-bench", {
        "kafka_port": 39092, "kafka_controller_port": 39093, "redis_port": 36379,
        "ray_port": 36390, "serve_http_port": 38000, "worker_web_port": 36066,
        "gateway_port": 38080, "ray_metrics_port": 36392, "prometheus_port": 39090,
        "schema_registry_port": 38085}),
    "CLAWSTREAM_INFERENCE_BACKEND": "simulated",
}
console = Console()
# Flow-control limits out of the way: benchmarks of something else (caches, the gateway)
# must not be paced by the entrance buckets or the tokens/s limiter.
UNLIMITED = {
    "CLAWSTREAM_USER_RATE_PER_S": "10000", "CLAWSTREAM_USER_BURST": "10000",
    "CLAWSTREAM_TENANT_RATE_PER_S": "10000", "CLAWSTREAM_TENANT_BURST": "10000",
    "CLAWSTREAM_POOLS": json.dumps({"small": {"capacity_tokens_per_s": 1e7, "rank": 0},
                                    "large": {"capacity_tokens_per_s": 1e7, "rank": 1}}),
}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# Flow-control limits out of the way: a benchmark that measures something else must not be
# paced by the entrance buckets or the tokens/s limiter.
UNLIMITED = {
    "CLAWSTREAM_USER_RATE_PER_S": "10000", "CLAWSTREAM_USER_BURST": "10000",
    "CLAWSTREAM_TENANT_RATE_PER_S": "10000", "CLAWSTREAM_TENANT_BURST": "10000",
    "CLAWSTREAM_POOLS": json.dumps({"small": {"capacity_tokens_per_s": 1e7, "rank": 0},
                                    "large": {"capacity_tokens_per_s": 1e7, "rank": 1}}),
}


@contextmanager
def bench_stack(workers: int = 1, env: Mapping[str, str] | None = None,
                keep: bool = False, timings: dict[str, float] | None = None,
                inference: bool = True) -> Iterator[Settings]:
    """Start a fresh benchmark stack (simulated model unless ``env`` says otherwise; no
    Ray at all without ``inference``) with ``workers`` Faust workers, and stop it
    afterwards unless ``keep``. ``timings`` gets ``up_s`` (Kafka, Redis, Ray and the Serve
    deploy) and ``workers_s``."""
    os.environ.update(BENCH_ENV)
    os.environ.update(env or {})
    from clawstream.config import get_settings
    from clawstream.deploy.local import RichProgress, down, up
    from clawstream.deploy.local import worker as worker_proc
    from clawstream.streams.admin import ensure_topics
    from clawstream.streams.schema_registry import bind_settings

    get_settings.cache_clear()
    settings = Settings()
    down(settings, purge=True)  # a fresh stack: no topics, tables or Redis keys of a last run
    try:
        # Inside the try: what did come up of a stack that failed is stopped too.
        t = time.monotonic()
        up(settings, with_workers=False, with_inference=inference,
           progress=RichProgress(console), redeploy=inference)
        up_s = time.monotonic() - t
        ensure_topics(settings.bootstrap_servers, settings.partitions, settings.app_id,
                      replication_factor=settings.topic_replication_factor,
                      min_insync_replicas=settings.min_insync_replicas)
        # The records the workers write carry the registry's ids: read and write as they do.
        bind_settings(settings)
        t = time.monotonic()
        for index in range(workers):
            worker_proc.start(settings, index)
        if timings is not None:
            timings.update(up_s=up_s, workers_s=time.monotonic() - t)
        yield settings
    finally:
        if not keep:
            down(settings)


# ---------------------------------------------------------------- per-process accounting

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _label(pid: int, component: str) -> str:
    """A short, stable name for one process of a component (Ray has a dozen)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return component
    first = argv[0].decode(errors="replace")
    if first.startswith("ray::"):
        name = first.removeprefix("ray::").split(".")[0]
        if name.startswith("ServeReplica:"):  # ServeReplica:<app>:<deployment>
            name = "replica:" + name.rsplit(":", 1)[-1]
        return "ray:" + name
    if component != "ray":
        return component
    names = [Path(a.decode(errors="replace")).name for a in argv[:3]]
    for name in names:
        if name and not name.startswith(("python", "-")):
            return f"ray:{name.removesuffix('.py')}"
    return "ray:python"


def stack_processes(settings: Settings) -> dict[int, str]:
    """pid -> label for every process of the stack (each component's whole session)."""
    from clawstream.deploy.local.process import Processes, session_members

    procs = Processes(settings.run_dir, settings.log_dir)
    out: dict[int, str] = {}
    for component in procs.names():
        leader = procs.pid(component)
        if leader is None:
            continue
        try:
            sid = os.getsid(leader)
        except OSError:
            continue
        for pid in session_members(sid) or [leader]:
            out[pid] = _label(pid, component)
    return out


def cpu_seconds(pids: Mapping[int, str]) -> dict[int, float]:
    """User + system CPU seconds so far of each pid that still runs."""
    out: dict[int, float] = {}
    for pid in pids:
        try:
            raw = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rfind(")") + 2:].split()
        out[pid] = (int(fields[11]) + int(fields[12])) / _CLK_TCK
    return out


def cpu_by_label(pids: Mapping[int, str], before: Mapping[int, float],
                 after: Mapping[int, float]) -> dict[str, float]:
    """CPU seconds spent between two samples, summed per label."""
    spent: dict[str, float] = {}
    for pid, label in pids.items():
        if pid in after:
            spent[label] = spent.get(label, 0.0) + after[pid] - before.get(pid, 0.0)
    return spent


def memory_by_label(pids: Mapping[int, str]) -> dict[str, tuple[float, float]]:
    """(RSS, PSS) in MiB per label; PSS shares pages between the processes mapping them,
    so its sum is the memory the stack really holds (RSS sums count shared pages twice)."""
    out: dict[str, tuple[float, float]] = {}
    for pid, label in pids.items():
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        except OSError:
            continue
        fields = {line.split(":")[0]: line.split()[1] for line in rollup[1:] if ":" in line}
        rss, pss = int(fields.get("Rss", 0)) / 1024, int(fields.get("Pss", 0)) / 1024
        old = out.get(label, (0.0, 0.0))
        out[label] = (old[0] + rss, old[1] + pss)
    return out


def machine_cpu_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores), from /proc/stat: what a
    benchmark's own processes did not use of it is other people's load, reported with it."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / _CLK_TCK
