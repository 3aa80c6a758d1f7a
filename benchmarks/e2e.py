"""``just bench e2e``: N requests through the whole flow with the SIMULATED model backend.

Prints end-to-end p50/p95/p99 and the split per hop, and as a same-run baseline the latency
of calling the inference app directly, so the figure to watch is the ratio (what Kafka,
Faust and the tool step add on top of the model call).
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections import Counter
from typing import Annotated, Any

import typer
from rich.progress import Progress
from rich.table import Table

from benchmarks.common import bench_stack, console, pct
from clawstream.config import Settings


def hops(answer: dict[str, Any], received_ms: float) -> dict[str, float]:
    """The answer's latency split by hop; an answer with no step (a cache hit, or a request
    refused at admission) spends all of its time in the first hop."""
    t = answer["timeline"]
    first_issue = t[0]["issued_at_ms"] if t else answer["answered_at_ms"]
    out = {"request topic + coordinator": first_issue - answer["created_at_ms"]}
    for e in t:
        out[f"{e['step_type']} queue wait"] = e["queue_wait_ms"]
        out[f"{e['step_type']} run"] = e["run_ms"]
        out[f"{e['step_type']} result back"] = e["result_wait_ms"]
    out["answer topic → subscriber"] = received_ms - answer["answered_at_ms"]
    out["end to end"] = received_ms - answer["created_at_ms"]
    return out


async def direct_baseline(serve_url: str, n: int) -> list[float]:
    from clawstream.inference.client import InferenceClient

    times = []
    async with InferenceClient(serve_url) as client:
        for i in range(n):
            start = time.perf_counter()
            await client.generate([{"role": "user", "content": f"question {i}"}], max_tokens=64)
            times.append((time.perf_counter() - start) * 1000)
    return times


def measure(settings: Settings, requests: int, in_flight: int
            ) -> tuple[list[dict[str, float]], list[float]]:
    """The requests' hops and the direct model calls' times on a running bench stack."""
    from clawstream.streams.publisher import Publisher, new_request, publish_request
    from clawstream.streams.subscriber import read_topic
    from clawstream.streams.topics import ANSWERS

    baseline = asyncio.run(direct_baseline(settings.serve_url, 50))
    publisher = Publisher(settings.bootstrap_servers)
    results: list[dict[str, float]] = []
    statuses: Counter[str] = Counter()
    with Progress(console=console) as progress:
        task = progress.add_task("requests", total=requests)
        sent = 0
        while sent < requests:
            batch = [new_request(agent="researcher", conversation_id=uuid.uuid4().hex,
                                 text=f"Where does clawstream keep caches? #{sent + i}")
                     for i in range(min(in_flight, requests - sent))]
            wanted = {r["request_id"] for r in batch}
            for r in batch:
                publish_request(publisher, r)
            # From the beginning: answers may land before a reader at the end is assigned.
            for _, answer in read_topic(settings.bootstrap_servers, ANSWERS.name,
                                        timeout_s=60):
                if answer["request_id"] in wanted:
                    wanted.discard(answer["request_id"])
                    results.append(hops(answer, time.time() * 1000))
                    statuses[answer["status"]] += 1
                    progress.advance(task)
                if not wanted:
                    break
            if wanted:
                raise SystemExit(f"{len(wanted)} request(s) got no answer: lost?")
            sent += len(batch)
    if set(statuses) != {"ok"}:
        console.print(f"[yellow]answers by status: {dict(statuses)}[/] (not all ok: "
                      "the figures include answers that skipped the model)")
    return results, baseline


def main(requests: int = 200, in_flight: int = 8, keep_stack: bool = False,
         auth: Annotated[str, typer.Option(help="on, off, or both: the same run on a stack "
                                                "with logins and ACLs and on one without, "
                                                "and the cost of auth as their ratio")] = "on",
         ) -> None:
    modes = {"on": [True], "off": [False], "both": [True, False]}.get(auth)
    if modes is None:
        raise typer.BadParameter("--auth is on, off or both")
    medians: dict[bool, float] = {}
    for with_auth in modes:
        env = {"CLAWSTREAM_AUTH": "true" if with_auth else "false"}
        with bench_stack(keep=keep_stack, env=env) as settings:
            console.print(f"[bold]bench e2e[/]: {requests} requests, {in_flight} in flight, "
                          f"backend={settings.inference_backend} (simulated, "
                          f"{settings.simulated_delay_ms:.0f} ms), auth "
                          f"{'on' if with_auth else 'off'}")
            results, baseline = measure(settings, requests, in_flight)
            report(results, baseline)
            medians[with_auth] = statistics.median(r["end to end"] for r in results)
    if len(medians) == 2:
        console.print(f"cost of auth: end-to-end median {medians[True]:.1f} ms with logins "
                      f"and ACLs, {medians[False]:.1f} ms without = "
                      f"{medians[True] / medians[False]:.2f} x")


def report(results: list[dict[str, float]], baseline: list[float]) -> None:
    table = Table("hop", "p50 ms", "p95 ms", "p99 ms", title="per hop (median over requests)")
    for name in results[0]:
        values = [r[name] for r in results if name in r]
        table.add_row(name, f"{pct(values, 0.5):.1f}", f"{pct(values, 0.95):.1f}",
                      f"{pct(values, 0.99):.1f}")
    table.add_row("baseline: direct /generate", f"{pct(baseline, 0.5):.1f}",
                  f"{pct(baseline, 0.95):.1f}", f"{pct(baseline, 0.99):.1f}")
    console.print(table)
    e2e = statistics.median(r["end to end"] for r in results)
    console.print(f"answers: {len(results)}; end-to-end median {e2e:.1f} ms = "
                  f"{e2e / statistics.median(baseline):.1f} x the direct model call")


if __name__ == "__main__":
    typer.run(main)
