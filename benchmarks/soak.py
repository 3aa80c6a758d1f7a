"""``just bench soak``: the seed's load test, in full, on a replicated Kafka.

Three brokers (replication factor 3, ``min.insync.replicas=2``), two supervised workers,
the simulated model. The seed profile of ``clawstream load`` (a burst at 2x the average
rate, a plateau, a ramp down) for ``seconds`` with every fault the seed names: 20 % tool
errors (and 10 % latency spikes), 5 % model 5xx, a worker SIGKILL every 60 s, one broker
SIGKILLed and started again halfway.

The baseline, in the same run and on the same stack before the faults: the same profile,
compressed to ``baseline_s``, with every fault off. Printed side by side, with the seed's
bar: exactly one answer per request, nothing lost or doubled, p95 answer at 2x traffic,
queue wait median and p95. Each run's report (HTML, plots, verdict.json) stays under the
stack's state dir.
"""

from __future__ import annotations

import time
from typing import Any

import typer
from rich.table import Table

from benchmarks import faultload
from benchmarks.common import bench_stack, console
from clawstream.cli.load_cli import DEFAULT_AGENTS
from clawstream.config import Settings
from clawstream.deploy.load import plan as plans
from clawstream.deploy.load import report as reports
from clawstream.deploy.load.run import execute, run_id
from clawstream.streams.masking import mask_text

WORKERS = 2
SOAK_ENV = {**faultload.FAULT_ENV, "CLAWSTREAM_KAFKA_BROKERS": "3"}


def _run(settings: Settings, name: str, rate: float, seconds: float, faults: plans.Faults,
         seed: int) -> dict[str, Any]:
    phases = plans.profile("seed", rate, seconds)
    planned = plans.plan(phases, plans.parse_mix(DEFAULT_AGENTS),
                         plans.parse_mix("interactive:4,batch:1"), faults, seed, run_id())
    console.print(f"[bold]{name}[/]: {len(planned)} requests over {seconds:g} s "
                  f"({', '.join(f'{p.name} {p.rate:g}/s' for p in phases)}); process faults "
                  f"{faults.schedule(seconds, WORKERS) or 'none'}")
    last = [time.monotonic()]

    def progress(live: Any) -> None:
        if time.monotonic() - last[0] >= 30:  # a line every 30 s: a log, not a live view
            last[0] = time.monotonic()
            console.print(f"  {live.elapsed_s:5.0f} s  sent {live.sent}/{live.planned}  "
                          f"answered {live.answered}  consumer lag {live.lag}")
            for line in live.notes[-3:]:
                console.print(f"  [dim]{line}[/]")

    out = execute(settings, planned, faults, workers=WORKERS, progress=progress)
    directory = settings.state_dir / "soak" / name
    summary = reports.write(out, phases, directory)
    console.print(f"  report: {directory / 'report.html'}")
    for answers in out.answers.values():
        if answers[0]["status"] != "ok":
            console.print(f"  {name}: {answers[0]['status']} {answers[0]['request_id']}: "
                          f"{mask_text(answers[0]['reason'] or '')[:200]}")
    return summary


def main(rate: float = 3.0, seconds: float = 600.0, baseline_s: float = 120.0,
         kill_every_s: float = 60.0, broker_down_s: float = 10.0, seed: int = 1) -> None:
    with bench_stack(workers=WORKERS, env=SOAK_ENV) as settings:
        console.print(f"[bold]bench soak[/]: {settings.kafka_brokers} brokers (replication "
                      f"{settings.topic_replication_factor}, min ISR "
                      f"{settings.min_insync_replicas}), {WORKERS} workers, simulated model")
        base = _run(settings, "baseline", rate, baseline_s, plans.Faults(), seed)
        soak = _run(settings, "soak", rate, seconds, plans.Faults(
            tool_error_rate=0.2, tool_latency_rate=0.1, tool_latency_s=2.0,
            model_error_rate=0.05, worker_kill_every_s=kill_every_s,
            broker_restart_at_s=seconds / 2, broker_down_s=broker_down_s), seed + 1)
    table = Table("figure", "baseline (no faults)", "soak (all faults)", "seed's bar", "",
                  title=f"bench soak: seed profile at {rate:g} requests/s average")
    for b, s in zip(reports.verdict(base), reports.verdict(soak), strict=True):
        mark = {True: "[green]pass[/]", False: "[red]FAIL[/]", None: ""}[s.passed]
        table.add_row(s.figure, b.value, s.value, s.bar, mark)
    table.add_row("p50 answer", _seconds(base["p50_answer_s"]), _seconds(soak["p50_answer_s"]),
                  "", "")
    table.add_row("late sends (client behind schedule)", str(base["late_sends"]),
                  str(soak["late_sends"]), "", "")
    console.print(table, width=max(console.width, 120))
    for reason, count in soak["statuses_by_reason"].items():
        console.print(f"  soak: {count} x {reason}")
    console.print(f"  soak faults done: {', '.join(soak['faults'])}")
    if not (reports.nothing_lost(base) and reports.nothing_lost(soak)):
        raise SystemExit("requests were lost or answered twice, or an effect applied twice")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g} s"


if __name__ == "__main__":
    typer.run(main)
