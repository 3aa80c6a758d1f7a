"""``clawstream eval AGENT --set FILE``: a regression set through the real event flow.

Prints the report (pass rate, each scenario's verdict with its reason, tokens, cost,
latency), stores it as JSON, and exits 1 when the pass rate is under the threshold, so CI
gates a change of prompt, model or trimming on it. ``--compare V1 V2`` runs the set on both
versions and shows what changed; ``--context 2,4,6,8`` runs it once per context setting
and shows quality against tokens, so a team picks the trimming from numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from clawstream.cli.eval_run import EvalReport, Runner
from clawstream.cli.eval_set import SetError, load_set
from clawstream.config import Settings

console = Console()


def report_table(report: EvalReport) -> Table:
    table = Table("scenario", "verdict", "reason", "tokens", "USD", "latency ms",
                  title=f"{report.agent} {report.version}: {report.passed}/"
                  f"{len(report.scenarios)} passed ({report.pass_rate:.0%})",
                  title_justify="left")
    for s in report.scenarios:
        table.add_row(s.name, "[green]pass[/]" if s.passed else "[red]FAIL[/]", s.reason,
                      str(s.tokens), f"{s.cost_usd:.6f}", f"{s.latency_ms:.0f}")
    return table


def summary(report: EvalReport) -> str:
    return (f"pass rate [bold]{report.pass_rate:.1%}[/] ({report.passed}/"
            f"{len(report.scenarios)}), {report.tokens} tokens, ${report.cost_usd:.6f}, "
            f"p50 turn latency {report.p50_latency_ms:.0f} ms, {report.duration_s:.1f} s "
            f"({report.scenarios_per_minute:.1f} scenarios/min)")


def compare_table(first: EvalReport, second: EvalReport) -> Table:
    """Both versions side by side, and what changed per scenario."""
    table = Table("scenario", first.version, second.version, "change", "tokens",
                  f"reason ({second.version})",
                  title=f"{first.version} {first.pass_rate:.0%} -> {second.version} "
                  f"{second.pass_rate:.0%}", title_justify="left")
    theirs = {s.name: s for s in second.scenarios}
    for mine in first.scenarios:
        other = theirs[mine.name]
        change = ("" if mine.passed == other.passed else
                  "[red]broke[/]" if mine.passed else "[green]fixed[/]")
        table.add_row(mine.name, "pass" if mine.passed else "FAIL",
                      "pass" if other.passed else "FAIL", change,
                      f"{mine.tokens} -> {other.tokens}",
                      "" if other.passed else other.reason)
    return table


def context_table(reports: list[EvalReport]) -> Table:
    table = Table("context exchanges", "pass rate", "tokens", "tokens / scenario", "USD",
                  "p50 latency ms", title="quality and cost per context setting",
                  title_justify="left")
    for r in reports:
        table.add_row(str(r.context_exchanges), f"{r.pass_rate:.1%}", str(r.tokens),
                      f"{r.tokens / max(1, len(r.scenarios)):.0f}", f"{r.cost_usd:.6f}",
                      f"{r.p50_latency_ms:.0f}")
    return table


def _contexts(text: str | None) -> list[int | None]:
    if not text:
        return [None]
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter("--context takes integers, e.g. 2,4,6,8") from None
    if not values or any(not 1 <= v <= 64 for v in values):
        raise typer.BadParameter("--context takes integers 1-64, e.g. 2,4,6,8")
    return list(values)


def eval_command(
    agent: Annotated[str | None, typer.Argument(help="The agent (default: the set's).")]
    = None,
    set_file: Annotated[Path | None, typer.Option(
        "--set", help="The regression set, YAML or JSON (default: evals/AGENT.yaml).",
        dir_okay=False)] = None,
    version: Annotated[str | None, typer.Option(help="Run this version of the agent "
                                                "(default: the live one).")] = None,
    threshold: Annotated[float | None, typer.Option(help="Exit 1 under this pass rate "
                                                    "(default: CLAWSTREAM_EVAL_MIN_PASS_"
                                                    "RATE).")] = None,
    compare: Annotated[tuple[str, str] | None, typer.Option(
        help="Two versions, side by side (exit 1 if the second is under the threshold).")]
    = None,
    context: Annotated[str | None, typer.Option(help="Context exchanges to compare, e.g. "
                                                "2,4,6,8.")] = None,
    out: Annotated[Path | None, typer.Option(help="Where reports are stored (default: "
                                             "<state dir>/evals).")] = None,
) -> None:
    """Run a regression set through the real event flow, print and store the report."""
    if set_file is None and agent is None:
        console.print("[red]name the agent or the set: clawstream eval AGENT [--set FILE][/]")
        raise typer.Exit(2)
    set_file = set_file or Path("evals") / f"{agent}.yaml"
    try:
        eval_set = load_set(set_file)
    except SetError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from exc
    name = agent or eval_set.agent
    if not name:
        console.print("[red]name the agent: clawstream eval AGENT, or agent: in the set[/]")
        raise typer.Exit(2)
    settings = Settings()
    limit = settings.eval_min_pass_rate if threshold is None else threshold
    runner = Runner(settings)
    directory = out or settings.state_dir / "evals"
    versions = list(compare) if compare else [version]
    gated: list[EvalReport] = []
    for each in versions:
        reports = []
        for exchanges in _contexts(context):
            report = runner.run(eval_set, name, str(set_file), each, exchanges)
            path = report.save(directory)
            reports.append(report)
            if not compare:
                console.print(report_table(report))
            console.print(f"{name} {report.version}"
                          f"{f' context {exchanges}' if exchanges else ''}: "
                          f"{summary(report)}; stored {path}")
        if len(reports) > 1:
            console.print(context_table(reports))
        gated.append(min(reports, key=lambda r: r.pass_rate))
    if compare:
        console.print(compare_table(gated[0], gated[1]))
    judged = gated[-1]
    if judged.pass_rate < limit:
        console.print(f"[red]pass rate {judged.pass_rate:.1%} is under the threshold "
                      f"{limit:.1%}[/]")
        raise typer.Exit(1)
