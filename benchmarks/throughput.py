"""``just bench throughput``: open-loop load at rising rates until the stack saturates.

For ``chat`` (one model step) and ``researcher`` (retrieval tool, then the model) on the
SIMULATED model backend (``--delay-ms``, 1 ms by default), with caches off (every step
runs) and on (one repeated question: prompt and tool caches answer), one worker. Requests
are sent on a fixed schedule whatever the answers do (open loop: a slow system is not
allowed to slow its own load down). Per rate:

- answers/s over the rate's window, and end-to-end p50/p95/p99 (created → answer read);
- the median of every hop of the answer's timeline (request topic + coordinator, each
  step's queue wait, run and result back, answer topic → reader) and the model step's
  overhead: its run time minus the model's own (the simulated delay);
- CPU seconds per answered request for every process of the stack (worker, Kafka, Redis
  and each of Ray's processes), read from /proc around the window.

In the same run, with the same broker and the same load generator: the Kafka floor, a
plain confluent-kafka pipeline with the same number of topic hops (``benchmarks/floor.py``,
one relay process), so the figure to watch is clawstream's latency over the floor's. Before
the load: the stack's idle memory (RSS and PSS per process) and how long ``up`` took.

A rate counts as sustained when at least 90 % of its requests were answered within the
window plus a grace, with p50 under a second; the first rate that is not ends the sweep
for that agent, and saturation is the highest rate of answers seen.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaException,
    Producer,
    TopicPartition,
)
from rich.table import Table

from benchmarks import model_path
from benchmarks.common import (
    REPO_ROOT,
    UNLIMITED,
    bench_stack,
    console,
    cpu_by_label,
    cpu_seconds,
    machine_cpu_seconds,
    memory_by_label,
    pct,
    stack_processes,
)
from clawstream.streams.kafka_access import client_config

Record = dict[str, Any]
HOPS = {"chat": 4, "researcher": 6}
"""Topics a request crosses: request, (tool command, tool result,) model command, model
result, answer."""
SUSTAINED_SHARE = 0.9
GRACE_S = 3.0


@dataclass
class RateResult:
    system: str
    rate: float
    sent: int
    answered: int
    window_s: float
    latencies: list[float]
    hops: dict[str, float] = field(default_factory=dict)
    cpu_ms: dict[str, float] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    others_cpu_s: float = 0.0
    """CPU seconds used on the machine during the window by processes that are neither
    the stack nor this benchmark (other people's load: a noisy figure when it is high)."""

    @property
    def answers_per_s(self) -> float:
        return self.answered / self.window_s if self.window_s else 0.0

    @property
    def sustained(self) -> bool:
        return (self.answered >= SUSTAINED_SHARE * self.sent and bool(self.latencies)
                and pct(self.latencies, 0.5) < 1000)

    def p(self, q: float) -> float:
        return pct(self.latencies, q) if self.latencies else float("nan")


class AnswerReader:
    """Reads a topic from its current end in a thread; records when each key arrived."""

    def __init__(self, bootstrap: str, topic: str, ident: Callable[[bytes], str | None],
                 fresh: bool = False) -> None:
        """``fresh``: the topic was just created (read it from the start; its partitions
        may have no leader in this client's metadata yet, so their ends cannot be asked)."""
        self.arrived: dict[str, tuple[float, bytes]] = {}
        self._ident = ident
        self._stop = threading.Event()
        self._consumer = Consumer({**client_config(bootstrap), "enable.auto.commit": False,
                                   "group.id": f"bench-throughput-{uuid.uuid4().hex[:8]}"})
        parts = self._consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self._consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING if fresh
                                              else self._end(topic, p)) for p in parts])
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _end(self, topic: str, partition: int, patience_s: float = 30.0) -> int:
        """The partition's end offset; a topic created a moment ago may not have a leader
        yet, so ask again until it has."""
        deadline = time.monotonic() + patience_s
        while True:
            try:
                return int(self._consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=10)[1])
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def _run(self) -> None:
        # poll, not consume(n, timeout): consume waits out its timeout unless n records
        # came, which would add up to that timeout to every latency measured here.
        while not self._stop.is_set():
            msg = self._consumer.poll(0.05)
            if msg is None or msg.error():
                continue
            now = time.time() * 1000
            key = self._ident(msg.value())
            if key is not None and key not in self.arrived:
                self.arrived[key] = (now, msg.value())

    def wait_for(self, keys: set[str], until: float) -> None:
        while time.monotonic() < until and not keys <= self.arrived.keys():
            time.sleep(0.05)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._consumer.close()


def open_loop(rate: float, duration_s: float, send: Callable[[int], None]) -> int:
    """Call ``send(i)`` on a fixed schedule of ``rate`` per second; returns how many."""
    n = max(1, int(rate * duration_s))
    start = time.monotonic()
    for i in range(n):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        send(i)
    return n


# ------------------------------------------------------------------------- clawstream

def _answer_id(value: bytes) -> str | None:
    from clawstream.schemas import DecodeError, decode

    try:
        return str(decode(value)[1]["request_id"])
    except (DecodeError, KeyError):
        return None


def _hops(answer: Record, received_ms: float, delay_ms: float) -> dict[str, float]:
    timeline = answer["timeline"]
    out = {"request → first step issued": timeline[0]["issued_at_ms"] - answer["created_at_ms"]
           if timeline else float("nan")}
    for entry in timeline:
        kind = entry["step_type"]
        out[f"{kind}: queue wait"] = entry["queue_wait_ms"]
        out[f"{kind}: run"] = entry["run_ms"]
        out[f"{kind}: result back"] = entry["result_wait_ms"]
        if kind == "model" and not entry["cache_hit"]:
            out["model: overhead (run - model)"] = entry["run_ms"] - delay_ms
    if timeline:
        last = timeline[-1]
        out["last result → answer"] = answer["answered_at_ms"] - (
            last["issued_at_ms"] + last["queue_wait_ms"] + last["run_ms"]
            + last["result_wait_ms"])
    out["answer topic → reader"] = received_ms - answer["answered_at_ms"]
    return out


PROFILED = ("worker", "ray:replica", "ray:ProxyActor", "ray:raylet")
"""Processes py-spy samples with ``--profile-rate`` (prefixes of their labels)."""


@contextmanager
def profiling(pids: dict[int, str], out_dir: Path | None, duration_s: float,
              tag: str) -> Iterator[None]:
    """py-spy (sampling, non-blocking) on the worker and Ray's request path while the
    block runs; collapsed stacks land in ``out_dir`` and are summarised after."""
    if out_dir is None:
        yield
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    spies = []
    for pid, label in pids.items():
        if label.startswith(PROFILED):
            path = out_dir / f"{tag}-{label.replace(':', '_')}-{pid}.txt"
            spies.append((label, path, subprocess.Popen(
                [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid),
                 "--rate", "200", "--duration", str(int(duration_s)), "--nonblocking",
                 "--format", "raw", "--output", str(path)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
    try:
        yield
    finally:
        for label, path, spy in spies:
            spy.wait(duration_s + 30)
            if path.exists():
                console.print(_profile_table(label, path))


def _profile_table(label: str, path: Path, top: int = 12) -> Table:
    """Top functions by own samples and by samples under them (collapsed py-spy stacks)."""
    own: dict[str, int] = {}
    under: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].split("/")[-1]
                  + ")" if " (" in f else f for f in stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            under[frame] = under.get(frame, 0) + n
    table = Table(f"{label}: own %", "function", "incl. %", title=f"py-spy {path.name}, "
                  f"{total} samples")
    for frame, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        table.add_row(f"{100 * n / max(1, total):.1f}", frame,
                      f"{100 * under.get(frame, 0) / max(1, total):.1f}")
    return table


def run_rate(settings: Any, agent: str, rate: float, duration_s: float, cached: bool,
             delay_ms: float, pids: dict[int, str], profile_dir: Path | None = None
             ) -> RateResult:
    from clawstream.schemas import decode
    from clawstream.streams.publisher import Publisher, new_request, publish_request
    from clawstream.streams.topics import ANSWERS

    reader = AnswerReader(settings.bootstrap_servers, ANSWERS.name, _answer_id)
    run = uuid.uuid4().hex[:6]
    sent: dict[str, Record] = {}
    text = "Where does clawstream keep its caches?"

    with Publisher(settings.bootstrap_servers) as publisher:
        def send(i: int) -> None:
            request = new_request(
                agent=agent, conversation_id=f"tp-{run}-{i}", tenant_id="bench",
                user_id=f"u-{i % 97}", text=text if cached else f"{text} #{run}-{i}")
            sent[request["request_id"]] = request
            publish_request(publisher, request)

        cpu_before = cpu_seconds(pids)
        machine_before, own_before = machine_cpu_seconds(), _own_cpu()
        t0, t0_ms = time.monotonic(), time.time() * 1000
        with profiling(pids, profile_dir, duration_s, f"{agent}-{rate:g}"):
            n = open_loop(rate, duration_s, send)
        reader.wait_for(set(sent), time.monotonic() + GRACE_S)
        window = time.monotonic() - t0
        cpu_after = cpu_seconds(pids)
        machine_after, own_after = machine_cpu_seconds(), _own_cpu()
    # Stragglers past the window still get an answer: wait for them (not counted) so the
    # next rate starts on an empty pipeline.
    reader.wait_for(set(sent), time.monotonic() + 60)
    reader.close()
    answered = {k: v for k, v in reader.arrived.items() if k in sent}
    in_window = [k for k, (at, _) in answered.items() if at <= t0_ms + window * 1000]
    latencies, hops, statuses = [], [], {}
    for key, (at, raw) in answered.items():
        answer = decode(raw)[1]
        statuses[answer["status"]] = statuses.get(answer["status"], 0) + 1
        latencies.append(at - sent[key]["created_at_ms"])
        hops.append(_hops(answer, at, delay_ms))
    spent = cpu_by_label(pids, cpu_before, cpu_after)
    others = (machine_after - machine_before) - (own_after - own_before) - sum(spent.values())
    return RateResult(
        system=f"clawstream {agent}", rate=rate, sent=n,
        answered=min(len(in_window), n), window_s=window, latencies=latencies,
        hops={k: statistics.median([h[k] for h in hops if k in h])
              for k in (hops[0] if hops else {})},
        cpu_ms={label: 1000 * s / max(1, len(answered)) for label, s in spent.items()},
        statuses=statuses, others_cpu_s=max(0.0, others))


def _own_cpu() -> float:
    """CPU seconds of this process (the load generator and the answer reader)."""
    times = os.times()
    return times.user + times.system


# ------------------------------------------------------------------------------ floor

@contextmanager
def floor_pipeline(bootstrap: str, hops: int) -> Iterator[tuple[list[str], int]]:
    """``hops`` fresh topics and a relay process moving records from each to the next."""
    from confluent_kafka.admin import AdminClient, NewTopic

    from clawstream.config import get_settings

    tag = uuid.uuid4().hex[:6]
    topics = [f"bench.floor.{tag}.{i}" for i in range(hops)]
    partitions = get_settings().partitions
    admin = AdminClient(client_config(bootstrap))
    for future in admin.create_topics([NewTopic(t, num_partitions=partitions,
                                                replication_factor=1)
                                       for t in topics]).values():
        future.result()
    relay = subprocess.Popen([sys.executable, "-m", "benchmarks.floor", bootstrap, *topics])
    try:
        yield topics, relay.pid
    finally:
        relay.terminate()
        relay.wait(10)
        admin.delete_topics(topics)


def run_floor_rate(bootstrap: str, topics: list[str], rate: float, duration_s: float,
                   relay_pid: int | None = None) -> RateResult:
    reader = AnswerReader(bootstrap, topics[-1], lambda v: v.split(b"|", 1)[0].decode(),
                          fresh=True)
    producer = Producer({**client_config(bootstrap), "acks": "all", "linger.ms": 1,
                         "enable.idempotence": True, "partitioner": "murmur2_random"})
    created: dict[str, float] = {}
    run = uuid.uuid4().hex[:6]

    def send(i: int) -> None:
        key = f"{run}-{i}"
        created[key] = time.time() * 1000
        producer.produce(topics[0], key=key.encode(), value=f"{key}|{'x' * 400}".encode())
        producer.poll(0)

    pids = {relay_pid: "floor relay"} if relay_pid else {}
    before = cpu_seconds(pids)
    machine_before, own_before = machine_cpu_seconds(), _own_cpu()
    t0 = time.monotonic()
    n = open_loop(rate, duration_s, send)
    producer.flush(10)
    reader.wait_for(set(created), time.monotonic() + GRACE_S)
    window = time.monotonic() - t0
    spent = cpu_by_label(pids, before, cpu_seconds(pids))
    others = (machine_cpu_seconds() - machine_before) - (_own_cpu() - own_before) - sum(
        spent.values())
    reader.close()
    latencies = [at - created[k] for k, (at, _) in reader.arrived.items() if k in created]
    return RateResult(system=f"kafka floor, {len(topics)} hops", rate=rate, sent=n,
                      answered=len(latencies), window_s=window, latencies=latencies,
                      cpu_ms={k: 1000 * v / max(1, len(latencies)) for k, v in spent.items()},
                      others_cpu_s=max(0.0, others))


# ---------------------------------------------------------------------------- calfkit

CALFKIT_PYTHON = REPO_ROOT / ".calfkit-venv" / "bin" / "python"
"""calfkit lives in its own virtual environment, never in the project's (see
``benchmarks/calfkit_agent.py``); without it the comparison is skipped."""


@contextmanager
def calfkit_worker(bootstrap: str, delay_ms: float) -> Iterator[int]:
    """calfkit's worker process; its request topic is created here first (the broker does
    not create topics on use, and calfkit's own provisioning comes after its first
    publish)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    from clawstream.config import get_settings

    topic = "bench-chat.requests"  # benchmarks/calfkit_agent.py: f"{AGENT}.requests"
    admin = AdminClient(client_config(bootstrap))
    if topic not in admin.list_topics(timeout=10).topics:
        admin.create_topics([NewTopic(topic, num_partitions=get_settings().partitions,
                                      replication_factor=1)])[topic].result()
    worker = subprocess.Popen([str(CALFKIT_PYTHON), "-W", "ignore", "-m",
                               "benchmarks.calfkit_agent", "serve", bootstrap, str(delay_ms)],
                              cwd=REPO_ROOT, stdout=subprocess.DEVNULL)
    try:
        yield worker.pid
    finally:
        worker.terminate()
        worker.wait(30)


def run_calfkit_rate(bootstrap: str, rate: float, duration_s: float, worker_pid: int
                     ) -> RateResult:
    pids = {worker_pid: "calfkit worker"}
    before = cpu_seconds(pids)
    machine_before = machine_cpu_seconds()
    load = subprocess.run([str(CALFKIT_PYTHON), "-W", "ignore", "-m", "benchmarks.calfkit_agent",
                           "load", bootstrap, str(rate), str(duration_s)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=duration_s + 180)
    spent = cpu_by_label(pids, before, cpu_seconds(pids))
    lines = [line for line in load.stdout.splitlines() if line.startswith("{")]
    if not lines:
        console.print(f"[red]calfkit load failed[/]: {load.stderr[-2000:]}")
        return RateResult("calfkit 0.13 agent", rate, 0, 0, duration_s, [])
    out = json.loads(lines[-1])
    latencies = [latency for _, latency in out["answers"]]
    # As for clawstream: until everything is answered, at most the schedule plus the grace.
    window = min(duration_s + GRACE_S, max((sent_at + latency / 1000
                                            for sent_at, latency in out["answers"]),
                                           default=duration_s))
    in_window = sum(1 for sent_at, latency in out["answers"]
                    if sent_at + latency / 1000 <= window)
    return RateResult(
        system="calfkit 0.13 agent", rate=rate, sent=out["sent"], answered=in_window,
        window_s=window, latencies=latencies,
        cpu_ms={k: 1000 * v / max(1, len(latencies)) for k, v in spent.items()},
        # the load generator is a child here: its CPU counts as "others"
        others_cpu_s=max(0.0, machine_cpu_seconds() - machine_before - sum(spent.values())))


# ------------------------------------------------------------------------------ report

def _results_table(results: list[RateResult], title: str) -> Table:
    table = Table("system", "rate/s", "answers/s", "sent", "answered", "p50 ms", "p95 ms",
                  "p99 ms", "statuses", "others' CPU %", title=title)
    for r in results:
        table.add_row(r.system, f"{r.rate:g}", f"{r.answers_per_s:.1f}", str(r.sent),
                      str(r.answered), f"{r.p(0.5):.1f}", f"{r.p(0.95):.1f}",
                      f"{r.p(0.99):.1f}",
                      " ".join(f"{k}:{v}" for k, v in sorted(r.statuses.items())),
                      f"{100 * r.others_cpu_s / max(r.window_s, 1e-9):.0f}")
    return table


def _hops_table(results: list[RateResult], title: str) -> Table:
    names = list(dict.fromkeys(k for r in results for k in r.hops))
    table = Table("hop (median ms)", *[f"{r.rate:g}/s" for r in results], title=title)
    for name in names:
        table.add_row(name, *[f"{r.hops[name]:.1f}" if name in r.hops else "-"
                              for r in results])
    return table


def _cpu_table(results: list[RateResult], title: str) -> Table:
    labels = sorted({k for r in results for k in r.cpu_ms},
                    key=lambda k: -max(r.cpu_ms.get(k, 0.0) for r in results))
    table = Table("process (CPU ms / request)", *[f"{r.rate:g}/s" for r in results],
                  title=title)
    for label in labels:
        if max(r.cpu_ms.get(label, 0.0) for r in results) < 0.05:
            continue
        table.add_row(label, *[f"{r.cpu_ms.get(label, 0.0):.2f}" for r in results])
    table.add_row("[bold]total[/]", *[f"{sum(r.cpu_ms.values()):.1f}" for r in results])
    return table


def _model_path_table(options: dict[str, dict[str, Any]], delay_ms: float) -> Table:
    table = Table("model path (sequential calls)", "p50 ms", "p99 ms", "note",
                  title=f"the model path alone, {delay_ms:g} ms of model time per call")
    for label, got in options.items():
        times = got["times"]
        note = (f"ray.init {got['init_s']:.1f} s, +{got['rss_added_mib']:.0f} MiB RSS"
                if "init_s" in got else got.get("error", "")[:60])
        table.add_row(label, f"{pct(times, 0.5):.2f}" if times else "-",
                      f"{pct(times, 0.99):.2f}" if times else "-", note)
    return table


def _memory_table(memory: dict[str, tuple[float, float]]) -> Table:
    table = Table("process (idle)", "RSS MiB", "PSS MiB", title="idle memory of the stack")
    for label, (rss, pss) in sorted(memory.items(), key=lambda kv: -kv[1][1]):
        table.add_row(label, f"{rss:.0f}", f"{pss:.0f}")
    table.add_row("[bold]total[/]", f"{sum(v[0] for v in memory.values()):.0f}",
                  f"{sum(v[1] for v in memory.values()):.0f}")
    return table


def sweep(rates: list[float], one: Callable[[float], RateResult]) -> list[RateResult]:
    """Rates in order until the first one that is not sustained (it is kept, then stop)."""
    out = []
    for rate in rates:
        result = one(rate)
        out.append(result)
        console.print(f"  {result.system} at {rate:g}/s: {result.answers_per_s:.1f} answers/s, "
                      f"p50 {result.p(0.5):.1f} ms, p99 {result.p(0.99):.1f} ms; others' CPU "
                      f"{100 * result.others_cpu_s / max(result.window_s, 1e-9):.0f} % "
                      "of one core")
        if not result.sustained:
            break
    return out


def bench_agent(settings: Any, agent: str, cache: str, rates: list[float], duration_s: float,
                delay_ms: float, pids: dict[int, str], floor: bool,
                profile: tuple[float, Path] | None = None, calfkit: bool = True
                ) -> RateResult:
    """The floor's sweep and the agent's on one stack; prints them, returns the best rate."""
    results: list[RateResult] = []
    if floor:
        with floor_pipeline(settings.bootstrap_servers, HOPS[agent]) as (topics, relay):
            results += sweep(rates, lambda r: run_floor_rate(
                settings.bootstrap_servers, topics, r, duration_s, relay))
    if calfkit and agent == "chat" and CALFKIT_PYTHON.exists():
        with calfkit_worker(settings.bootstrap_servers, delay_ms) as pid:
            results += sweep(rates, lambda r: run_calfkit_rate(
                settings.bootstrap_servers, r, duration_s, pid))
    # Warm-up, not counted: the first requests pay one-off costs (a lazily loaded model,
    # the retriever's corpus index, Faust's first fetches) that are not throughput.
    warm = run_rate(settings, agent, 2, 4, cache == "on", delay_ms, pids)
    console.print(f"  warm-up ({agent}, 8 requests): p50 {warm.p(0.5):.0f} ms, slowest "
                  f"{max(warm.latencies, default=float('nan')):.0f} ms")
    ours = sweep(rates, lambda r: run_rate(
        settings, agent, r, duration_s, cache == "on", delay_ms, pids,
        profile[1] / f"caches-{cache}" if profile and profile[0] == r else None))
    results += ours
    title = f"{agent}, caches {cache}"
    console.print(_results_table(results, title))
    console.print(_hops_table(ours, f"{title}: timeline hops"))
    console.print(_cpu_table(ours, f"{title}: CPU per answered request"))
    best = max(ours, key=lambda r: r.answers_per_s)
    console.print(f"[bold]{title}: saturation ≈ {best.answers_per_s:.0f} answers/s[/] "
                  f"(at {best.rate:g}/s offered)")
    return best


def _rates(spec: str) -> list[float]:
    return [float(r) for r in spec.split(",") if r.strip()]


def main(agents: str = "chat,researcher", caches: str = "off,on",
         rates: str = "10,25,50,100,150,200,300",
         researcher_rates: str = "5,10,25,50,100", duration_s: float = 8.0,
         delay_ms: float = 1.0, floor: bool = True, idle_s: float = 5.0,
         model_calls: int = 200, profile_rate: float = 0.0, calfkit: bool = True,
         transport: str = "",
         profile_dir: Path = Path(".bench-profiles")) -> None:
    """Sweeps ``rates`` (``researcher_rates`` for researcher) per agent and cache setting
    (``off``; ``on``: one repeated question, so the caches answer; ``on-fresh``: caches on,
    every question new, so only the corpus vectors and nothing else can hit);
    ``--profile-rate R`` samples the worker and Ray's processes with py-spy at rate R (raw
    stacks in ``profile_dir``, outside the stack's state dir, which the next run purges)."""
    profile = (profile_rate, profile_dir) if profile_rate else None
    summary: list[RateResult] = []
    for cache in [c.strip() for c in caches.split(",") if c.strip()]:
        env = {**UNLIMITED,
               "CLAWSTREAM_CACHE_ENABLED": "true" if cache.startswith("on") else "false",
               "CLAWSTREAM_SIMULATED_DELAY_MS": str(delay_ms)}
        if transport:  # the workers' way to the generator: http or handle
            env["CLAWSTREAM_INFERENCE_TRANSPORT"] = transport
        timings: dict[str, float] = {}
        with bench_stack(env=env, timings=timings) as settings:
            pids = stack_processes(settings)
            time.sleep(idle_s)  # let start-up work settle before reading idle memory
            console.print(f"[bold]bench throughput[/], caches {cache}, transport "
                          f"{getattr(settings, 'inference_transport', 'http')}: simulated model "
                          f"{delay_ms:g} ms, 1 worker, {duration_s:g} s per rate; up took "
                          f"{timings['up_s']:.1f} s, the worker {timings['workers_s']:.1f} s")
            console.print(_memory_table(memory_by_label(pids)))
            console.print(_model_path_table(model_path.measure(settings, model_calls),
                                            delay_ms))
            for agent in [a.strip() for a in agents.split(",") if a.strip()]:
                agent_rates = _rates(researcher_rates if agent == "researcher" else rates)
                summary.append(bench_agent(settings, agent, cache, agent_rates, duration_s,
                                           delay_ms, pids, floor, profile, calfkit))
    console.print(_results_table(summary, "saturation per agent and cache setting"))


if __name__ == "__main__":
    typer.run(main)
