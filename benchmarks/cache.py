"""``just bench cache``: the same seeded workload twice through the real flow, caches off
then on, with the SIMULATED model backend (embeddings stay real MiniLM).

Prints, for both runs: model tokens billed, model and tool calls made, cost per
interaction, request→answer p50/p95, and the ratios; then hit rates per layer and the
latency of a cache hit (steps answered from the cache, and direct look-ups).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import typer
from confluent_kafka import Consumer, TopicPartition
from rich.progress import Progress
from rich.table import Table

from benchmarks.common import UNLIMITED, bench_stack, console, pct
from benchmarks.workload import Interaction, generate
from clawstream.cli.cost import summarise
from clawstream.cli.cost_cli import layers_table
from clawstream.streams.kafka_access import client_config


@dataclass
class Run:
    label: str
    answers: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    lookup_ms: list[float] = field(default_factory=list)

    def steps(self, step_type: str, hit: bool) -> list[dict[str, Any]]:
        return [e for a in self.answers for e in a["timeline"]
                if e["step_type"] == step_type and e["cache_hit"] is hit]

    def latencies(self) -> list[float]:
        return [float(a["answered_at_ms"] - a["created_at_ms"]) for a in self.answers]


def _answer_reader(bootstrap: str) -> Consumer:
    """A reader positioned at the answer topic's current end, before anything is sent."""
    from clawstream.streams.topics import ANSWERS

    consumer = Consumer({**client_config(bootstrap), "group.id": f"bench-cache-{time.time()}",
                         "enable.auto.commit": False})
    parts = consumer.list_topics(ANSWERS.name, timeout=10).topics[ANSWERS.name].partitions
    consumer.assign([TopicPartition(ANSWERS.name, p,
                                    consumer.get_watermark_offsets(
                                        TopicPartition(ANSWERS.name, p), timeout=10)[1])
                     for p in parts])
    return consumer


def drive(bootstrap: str, workload: list[Interaction], in_flight: int, run: Run) -> None:
    """Keep ``in_flight`` requests outstanding until every interaction is answered."""
    from clawstream.schemas import decode
    from clawstream.streams.publisher import Publisher, new_request, publish_request

    publisher = Publisher(bootstrap)
    reader = _answer_reader(bootstrap)
    outstanding: set[str] = set()
    todo = list(workload)
    start = time.monotonic()
    with Progress(console=console) as progress:
        task = progress.add_task(run.label, total=len(workload))
        while todo or outstanding:
            while todo and len(outstanding) < in_flight:
                item = todo.pop(0)
                request = new_request(agent="researcher", conversation_id=item.conversation_id,
                                      text=item.text, tenant_id=item.tenant_id)
                publish_request(publisher, request)
                outstanding.add(request["request_id"])
            msg = reader.poll(0.1)
            if msg is None or msg.error():
                if time.monotonic() - start > 60 + 5 * len(workload):
                    raise SystemExit(f"{len(outstanding)} request(s) got no answer: lost?")
                continue
            _, answer = decode(msg.value())
            if answer["request_id"] in outstanding:
                outstanding.discard(answer["request_id"])
                run.answers.append(answer)
                progress.advance(task)
    run.wall_s = time.monotonic() - start
    reader.close()
    publisher.close()


async def hit_latency(settings: Any, n: int = 500) -> list[float]:
    """Direct prompt-cache look-ups of a present entry from this process, in ms."""
    from clawstream.inference.client import InferenceClient
    from clawstream.processors.caching import CacheControl, Caches, collecting
    from clawstream.processors.caching.results import CachedResult

    async with InferenceClient(settings.serve_url) as inference:
        caches = Caches(settings, inference)
        call = {"model": "default", "prompt_version": "bench", "max_tokens": 64,
                "temperature": 0.0, "messages": [{"role": "user", "content": "hit me"}]}
        key = caches.prompt.key(call, "bench-model")
        await caches.prompt.save(key, CachedResult("cached answer", caches.prompt.now_ms(),
                                                   40, 20, 0.00002), 300)
        times = []
        with collecting():
            for _ in range(n):
                t = time.perf_counter()
                assert await caches.prompt.lookup(key, CacheControl()) is not None
                times.append((time.perf_counter() - t) * 1000)
        await caches.store.aclose()
    return times


def run_once(enabled: bool, workload: list[Interaction], in_flight: int) -> Run:
    import redis

    run = Run("caches on" if enabled else "caches off")
    env = {**UNLIMITED, "CLAWSTREAM_CACHE_ENABLED": "true" if enabled else "false"}
    with bench_stack(env=env) as settings:
        redis.Redis.from_url(settings.redis_url).flushdb()  # the bench stack's own Redis
        drive(settings.bootstrap_servers, workload, in_flight, run)
        if enabled:
            run.lookup_ms = asyncio.run(hit_latency(settings))
    return run


def _ratio(off: float, on: float) -> str:
    return f"{on / off:.2f}" if off else "-"


def report(off: Run, on: Run) -> None:
    s_off, s_on = summarise(off.answers), summarise(on.answers)
    metrics = [
        ("answers with status ok", s_off.statuses["ok"], s_on.statuses["ok"], "{:.0f}"),
        ("model tokens billed (generation + embedding)",
         s_off.total.prompt_tokens + s_off.total.completion_tokens,
         s_on.total.prompt_tokens + s_on.total.completion_tokens, "{:.0f}"),
        ("model (generation) calls made", len(off.steps("model", False)),
         len(on.steps("model", False)), "{:.0f}"),
        ("tool calls made", len(off.steps("tool", False)), len(on.steps("tool", False)),
         "{:.0f}"),
        ("cost USD, total", s_off.total.cost_usd, s_on.total.cost_usd, "{:.6f}"),
        ("cost USD per interaction", s_off.total.cost_per_interaction,
         s_on.total.cost_per_interaction, "{:.7f}"),
        ("request → answer p50 ms", pct(off.latencies(), 0.5), pct(on.latencies(), 0.5),
         "{:.0f}"),
        ("request → answer p95 ms", pct(off.latencies(), 0.95), pct(on.latencies(), 0.95),
         "{:.0f}"),
        ("wall time s", off.wall_s, on.wall_s, "{:.1f}"),
    ]
    table = Table("metric", "caches off", "caches on", "on / off", title="bench cache")
    for name, a, b, fmt in metrics:
        table.add_row(name, fmt.format(a), fmt.format(b), _ratio(float(a), float(b)))
    console.print(table)
    console.print(layers_table(s_on.layers, "caches on: per layer"))
    hits = Table("cache hit latency", "n", "p50 ms", "p99 ms")
    for name, values in (("model step answered from cache (step run)",
                          [e["run_ms"] for e in on.steps("model", True)]),
                         ("tool step answered from cache (step run)",
                          [e["run_ms"] for e in on.steps("tool", True)]),
                         ("direct prompt-cache look-up (GET + decode)", on.lookup_ms)):
        if values:
            hits.add_row(name, str(len(values)), f"{pct(values, 0.5):.2f}",
                         f"{pct(values, 0.99):.2f}")
    console.print(hits)
    saved = 1 - s_on.total.cost_usd / s_off.total.cost_usd if s_off.total.cost_usd else 0.0
    calls_off = len(off.steps("model", False)) + len(off.steps("tool", False))
    calls_on = len(on.steps("model", False)) + len(on.steps("tool", False))
    console.print(f"savings: cost -{saved:.0%}; model+tool calls -{1 - calls_on / calls_off:.0%}"
                  f" ({calls_off} → {calls_on}); the cached run itself reports "
                  f"{s_on.total.savings_ratio:.0%} of its would-be cost saved")


def main(requests: int = 200, in_flight: int = 8, repeat_questions: float = 0.35,
         repeat_lookups: float = 0.15, repeat_documents: float = 0.10, seed: int = 7) -> None:
    """Same workload (same seed) through both runs; shares are of all interactions."""
    runs = []
    for enabled in (False, True):
        workload = generate(requests, repeat_questions=repeat_questions,
                            repeat_lookups=repeat_lookups, repeat_documents=repeat_documents,
                            seed=seed, min_gap=in_flight,
                            run_id=f"{'on' if enabled else 'off'}-{int(time.time())}")
        console.print(f"[bold]bench cache[/] ({'on' if enabled else 'off'}): {requests} "
                      f"researcher requests, {in_flight} in flight, seed {seed}; repeats: "
                      f"questions {repeat_questions:.0%}, look-ups {repeat_lookups:.0%}, "
                      f"documents {repeat_documents:.0%}; simulated model backend")
        runs.append(run_once(enabled, workload, in_flight))
    report(*runs)


if __name__ == "__main__":
    typer.run(main)
