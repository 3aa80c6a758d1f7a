"""``just bench chaos``: minutes of steady load while workers, the broker and Redis die.

Two workers under their supervisors; every ``kill_every_s`` one worker is SIGKILLed (they
take turns; its supervisor starts it again); once the broker is SIGKILLed and started
again after ``broker_down_s``, once Redis likewise. The load (``benchmarks/faultload.py``)
goes on at ``rate`` requests/s for ``duration_s``, queued by a client that does not stop
when the broker is away; then every request's answer is awaited (up to its deadline).

Printed: requests lost, answers doubled, duplicate effects (all must be 0); answers by
status, and the ``failed`` ones, which here are all caused by our infrastructure (the
workload has no tool or model faults of its own); latency from a request's creation to
its answer (p50, p95, max); the longest time without any answer while requests were
waiting; worker restarts by the supervisors; what each fault-guard did.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from itertools import pairwise

import typer
from rich.table import Table

from benchmarks import evidence, faultload
from benchmarks.common import bench_stack, console, pct
from benchmarks.faultload import Record
from clawstream.deploy.load.faults import inject
from clawstream.deploy.load.plan import Faults


def _schedule(duration_s: float, kill_every_s: float, broker_at_s: float,
              redis_at_s: float) -> list[tuple[float, str]]:
    """(seconds from start, what): worker kills take turns; one broker, one Redis kill."""
    return Faults(worker_kill_every_s=kill_every_s, broker_restart_at_s=broker_at_s,
                  redis_restart_at_s=redis_at_s).schedule(duration_s, workers=2)


def main(rate: float = 5.0, duration_s: float = 240.0, kill_every_s: float = 30.0,
         broker_at_s: float = 75.0, broker_down_s: float = 10.0, redis_at_s: float = 135.0,
         redis_down_s: float = 5.0, keep_stack: bool = False) -> None:
    from clawstream.deploy.local import worker as worker_proc
    from clawstream.deploy.local.supervision import read_state
    from clawstream.processors import answered, faust_fence, stall

    with bench_stack(workers=2, env=faultload.FAULT_ENV, keep=keep_stack) as settings:
        schedule = _schedule(duration_s, kill_every_s, broker_at_s, redis_at_s)
        console.print(f"[bold]bench chaos[/]: {rate:g} requests/s for {duration_s:g} s, "
                      f"2 supervised workers; faults at {[(t, w) for t, w in schedule]}")
        sent: list[Record] = []
        stop = threading.Event()
        unacked: list[int] = []
        loader = threading.Thread(target=lambda: unacked.append(
            faultload.load(settings.bootstrap_servers, rate, stop, sent, prefix="chaos")))
        t0 = time.monotonic()
        loader.start()

        timeline: list[str] = []

        def say(message: str) -> None:
            line = f"{time.monotonic() - t0:6.1f}s {message}"
            timeline.append(f"{time.strftime('%H:%M:%S', time.gmtime())} {line}")
            console.print(f"[dim]{line[:7]}[/]{line[7:]}")

        for at, what in schedule:
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            inject(settings, what, broker_down_s if what == "kafka" else redis_down_s, say)
        stop.wait(max(0.0, t0 + duration_s - time.monotonic()))
        stop.set()
        loader.join()
        say(f"load stopped: {len(sent)} requests sent; awaiting their answers")
        answers = faultload.collect_answers(settings, sent)
        faultload.explain_missing(settings.bootstrap_servers, {r["request_id"] for r in sent}
                        - answers.keys(), sent, settings.partitions)
        effects = faultload.count_effects(settings, sent)
        logs = "".join(worker_proc.log_file(settings, i).read_text(errors="replace")
                       for i in range(2))
        guards = {"records fetched again, not dropped": logs.count(faust_fence.FETCHED_AGAIN),
                  "restarts in place: stalled": logs.count(stall.STALLED),
                  "restarts in place: records dropped by Faust": logs.count(faust_fence.DROPPED),
                  "answers already on the log, not sent again": logs.count(answered.ALREADY_SENT)}
        restarts = {f"worker-{i}": (state.restarts if state else 0)
                    for i, state in ((i, read_state(settings, i)) for i in range(2))}
        evidence.keep("chaos", settings, sent, answers, {
            "faults": timeline, "guards": guards, "restarts": restarts,
            "counts": faultload.integrity(sent, answers, effects),
            "statuses": dict(Counter(v[0]["status"] for v in answers.values()))})
        report(sent, answers, effects, unacked[0] if unacked else 0, restarts, guards)


def longest_silence_ms(sent: list[Record], answers: dict[str, list[Record]]) -> float:
    """The longest time in which no answer went out while some request was waiting for
    one (from its creation): the outage a client saw."""
    answered = sorted(v[0]["answered_at_ms"] for v in answers.values())
    start = min(q["created_at_ms"] for q in sent)
    times = [start, *answered]
    return max((b - a for a, b in pairwise(times)), default=0.0)


def report(sent: list[Record], answers: dict[str, list[Record]], effects: list[int],
           unacked: int, restarts: dict[str, int], guards: dict[str, int]) -> None:
    counts = faultload.integrity(sent, answers, effects)
    firsts = [v[0] for v in answers.values()]
    statuses = Counter(a["status"] for a in firsts)
    latency = [float(a["answered_at_ms"] - a["created_at_ms"]) for a in firsts]
    table = Table("figure", "value", title="bench chaos")
    table.add_row("requests sent (never acknowledged by the broker)", f"{len(sent)} ({unacked})")
    table.add_row("answers by status", ", ".join(f"{s} {n}" for s, n in statuses.most_common()))
    for figure, count in counts.items():
        table.add_row(figure, str(count))
    table.add_row("failed, caused by our infrastructure", str(statuses.get("failed", 0)))
    if latency:
        table.add_row("latency created → answered p50 / p95 / max",
                      f"{pct(latency, 0.5) / 1000:.2f} / {pct(latency, 0.95) / 1000:.2f} / "
                      f"{max(latency) / 1000:.2f} s")
        table.add_row("longest time without an answer",
                      f"{longest_silence_ms(sent, answers) / 1000:.1f} s")
    for name, n in restarts.items():
        table.add_row(f"{name} restarted by its supervisor", str(n))
    for figure, count in guards.items():
        table.add_row(figure, str(count))
    faultload.conclude(table, answers, counts)


if __name__ == "__main__":
    typer.run(main)
