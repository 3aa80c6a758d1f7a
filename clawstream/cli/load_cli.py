"""``clawstream load``: drive a running stack with a seeded, open-loop profile while faults
are injected, show progress live, and write the report (HTML, plots, verdict)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console, Group
from rich.live import Live as RichLive
from rich.table import Table
from rich.text import Text

from clawstream.config import Settings

console = Console()
DEFAULT_AGENTS = "fault-effect:2,fault-flaky:1,fault-hang:1,fault-model:1"


def load(
    profile: Annotated[str, typer.Option(help="burst (2x), plateau, ramp (down) or seed "
                                         "(burst, plateau, ramp); ignored with --phase.")]
    = "seed",
    rate: Annotated[float, typer.Option(help="Average traffic, requests/s.")] = 2.0,
    seconds: Annotated[float, typer.Option(help="How long the profile lasts.")] = 60.0,
    phase: Annotated[list[str] | None, typer.Option(
        help="A custom phase RATE:SECONDS (or NAME=RATE:SECONDS); repeat for more.")] = None,
    agents: Annotated[str, typer.Option(
        help="Agent mix name:weight,... The default needs a stack started with "
        "CLAWSTREAM_FAULT_INJECTION=true and CLAWSTREAM_AGENT_MODULES=fixtures.faults.")]
    = DEFAULT_AGENTS,
    lanes: Annotated[str, typer.Option(help="Lane mix name:weight,...")]
    = "interactive:4,batch:1",
    seed: int = 1,
    limit: Annotated[int | None, typer.Option(help="Send at most this many.")] = None,
    tool_error_rate: Annotated[float, typer.Option(min=0, max=1)] = 0.2,
    tool_latency_rate: Annotated[float, typer.Option(min=0, max=1)] = 0.1,
    tool_latency_s: float = 2.0,
    model_error_rate: Annotated[float, typer.Option(min=0, max=1)] = 0.05,
    kill_worker_every: Annotated[float | None, typer.Option(
        help="SIGKILL a worker every N s (they take turns; supervisors restart them).")]
    = None,
    broker_restart_at: Annotated[float | None, typer.Option(
        help="SIGKILL a broker at this second, start it again after --broker-down.")] = None,
    broker_down: float = 5.0,
    redis_restart_at: Annotated[float | None, typer.Option(
        help="SIGKILL Redis at this second, start it again after --redis-down.")] = None,
    redis_down: float = 3.0,
    report: Annotated[Path, typer.Option(help="Folder for report.html, plots, "
                                         "verdict.json.")] = Path("load-report"),
) -> None:
    """Open-loop load with faults against the running stack; exits 1 if a request was
    lost, answered twice, or an effect applied twice."""
    from clawstream.deploy.load import plan as plans
    from clawstream.deploy.load import report as reports
    from clawstream.deploy.load.run import execute, run_id

    settings = Settings()
    try:
        phases = ([plans.parse_phase(p) for p in phase] if phase
                  else plans.profile(profile, rate, seconds))
        mix, lane_mix = plans.parse_mix(agents), plans.parse_mix(lanes)
    except ValueError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from exc
    faults = plans.Faults(tool_error_rate, tool_latency_rate, tool_latency_s,
                          model_error_rate, kill_worker_every, broker_restart_at,
                          broker_down, redis_restart_at, redis_down)
    planned = plans.plan(phases, mix, lane_mix, faults, seed, run_id(), limit)
    total_s = sum(p.seconds for p in phases)
    console.print(f"[bold]clawstream load[/]: {len(planned)} requests over {total_s:g} s "
                  f"({', '.join(f'{p.name} {p.rate:g}/s' for p in phases)}); faults at "
                  f"{faults.schedule(total_s, settings.worker_count)}")
    with RichLive(console=console, refresh_per_second=4) as view:
        out = execute(settings, planned, faults, workers=settings.worker_count,
                      progress=lambda live: view.update(_view(live)))
    summary = reports.write(out, phases, report)
    table = Table("figure", "value", "bar", "", title="verdict")
    for row in reports.verdict(summary):
        mark = {True: "[green]pass[/]", False: "[red]FAIL[/]", None: ""}[row.passed]
        table.add_row(row.figure, row.value, row.bar, mark)
    console.print(table)
    for reason, count in summary["statuses_by_reason"].items():
        console.print(f"  {count} x {reason}")
    console.print(f"report: {report / 'report.html'}")
    if not reports.nothing_lost(summary):
        raise typer.Exit(1)


def _view(live: object) -> Group:
    from clawstream.deploy.load.run import Live

    assert isinstance(live, Live)
    lag = "-" if live.lag is None else str(live.lag)
    line = Text.from_markup(
        f"[bold]{live.elapsed_s:6.1f}s[/] phase [cyan]{live.phase or '-'}[/]  sent "
        f"{live.sent}/{live.planned}  answered {live.answered}  in flight "
        f"{live.sent - live.answered}  consumer lag {lag}")
    return Group(line, *(Text.from_markup(n) for n in live.notes[-6:]))
