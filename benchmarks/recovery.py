"""``just bench recovery``: steady load on two workers, SIGKILL one, count what it cost.

The load (``benchmarks/faultload.py``): half the requests run a mutating tool whose effect
is counted per request, half the researcher flow on the simulated model. After a warm-up
one worker is SIGKILLed (its supervisor starts it again); the load goes on until every
request is answered.

Printed: the time until the group is processing again (from the kill to the first answer
on each partition the dead worker owned, the slowest of them), set against the steady
state's per-partition answer gap measured before the kill in the same run; requests lost
(must be 0); answers doubled (must be 0); duplicate effects (must be 0).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import defaultdict
from itertools import pairwise
from typing import Any

import typer
from rich.table import Table

from benchmarks import evidence
from benchmarks.common import bench_stack, console
from benchmarks.faultload import (
    FAULT_ENV,
    Record,
    collect_answers,
    conclude,
    count_effects,
    explain_missing,
    integrity,
    load,
    partition_of,
)


def main(rate: float = 6.0, warmup_s: float = 20.0, after_s: float = 40.0,
         keep_stack: bool = False) -> None:
    from clawstream.deploy.local import worker as worker_proc
    from clawstream.processors import faust_fence, stall

    with bench_stack(workers=2, env=FAULT_ENV, keep=keep_stack) as settings:
        console.print(f"[bold]bench recovery[/]: {rate:g} requests/s, 2 workers, SIGKILL "
                      f"worker-1 after {warmup_s:g} s, load goes on {after_s:g} s; session "
                      f"timeout {settings.worker_session_timeout_s:g} s")
        sent: list[Record] = []
        stop = threading.Event()
        loader = threading.Thread(target=load, args=(settings.bootstrap_servers, rate, stop,
                                                      sent))
        loader.start()
        stop.wait(warmup_s)
        killed_at = time.time() * 1000
        owned = _owned_partitions(settings, 1)
        worker_proc.kill(settings, 1)
        console.print(f"SIGKILLed worker-1 (it owned partitions {sorted(owned)})")
        stop.wait(after_s)
        stop.set()
        loader.join()
        answers = collect_answers(settings, sent)
        explain_missing(settings.bootstrap_servers, {r["request_id"] for r in sent}
                        - answers.keys(), sent, settings.partitions)
        effects = count_effects(settings, sent)
        survivor = worker_proc.log_file(settings, 0).read_text(errors="replace")
        healed = {"records fetched again, not dropped": survivor.count(faust_fence.FETCHED_AGAIN),
                  "survivor restarted: stalled": survivor.count(stall.STALLED),
                  "survivor restarted: records dropped by Faust":
                      survivor.count(faust_fence.DROPPED)}
        evidence.keep("recovery", settings, sent, answers, {
            "killed_at_ms": killed_at, "owned": sorted(owned), "guards": healed,
            "counts": integrity(sent, answers, effects)})
        report(sent, answers, effects, killed_at, owned, settings.partitions, healed)


def _owned_partitions(settings: Any, index: int) -> set[int]:
    """Partitions of the coordinator's topics the worker owns (its /ready page says)."""
    import httpx

    url = f"http://127.0.0.1:{settings.worker_web_port + index}/ready"
    return set(httpx.get(url, timeout=5).json()["partitions"])


def report(sent: list[Record], answers: dict[str, list[Record]], effects: list[int],
           killed_at: float, owned: set[int], partitions: int,
           healed: dict[str, int]) -> None:
    by_partition: dict[int, list[float]] = defaultdict(list)
    for reqs in answers.values():
        a = reqs[0]
        by_partition[partition_of(a["conversation_id"], partitions)].append(a["answered_at_ms"])
    gaps, resumed = [], {}
    for p, times in by_partition.items():
        times.sort()
        before = [t for t in times if t < killed_at]
        gaps += [b - a for a, b in pairwise(before)]
        after = [t for t in times if t >= killed_at]
        if after:
            resumed[p] = after[0] - killed_at
    stalled = {p: resumed[p] for p in (owned or resumed.keys()) if p in resumed}
    recovery_ms = max(stalled.values()) if stalled else float("nan")
    steady_gap = statistics.median(gaps) if gaps else float("nan")
    counts = integrity(sent, answers, effects)
    table = Table("figure", "value", title="bench recovery")
    table.add_row("requests sent", str(len(sent)))
    ok = sum(v[0]["status"] == "ok" for v in answers.values())
    table.add_row("answered (ok / other)", f"{ok} / {len(answers) - ok}")
    for figure, count in counts.items():
        table.add_row(figure, str(count))
    table.add_row("recovery: kill → first answer, slowest partition",
                  f"{recovery_ms / 1000:.1f} s")
    table.add_row("steady state: median gap between answers of a partition",
                  f"{steady_gap / 1000:.2f} s")
    table.add_row("ratio recovery / steady gap", f"{recovery_ms / steady_gap:.0f} x")
    for figure, count in healed.items():
        table.add_row(figure, str(count))
    conclude(table, answers, counts)


if __name__ == "__main__":
    typer.run(main)
