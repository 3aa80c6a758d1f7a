"""``clawstream cost``: spend, savings per cache layer, hit rates, cost per interaction."""

from __future__ import annotations

import time
from typing import Annotated, cast

import typer
from rich.console import Console
from rich.table import Table

from clawstream.cli.cost import CostReport, hit_rate, parse_since, summarise
from clawstream.config import Settings
from clawstream.schemas.names import AGENT_ANSWER, AGENT_EVENT
from clawstream.schemas.records import AgentAnswer, AgentEvent, CacheUsage

console = Console()


def cost(
    since: Annotated[str | None, typer.Option(help="30m, 2h, 7d or an ISO time.")] = None,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant.")] = None,
    idle: Annotated[float, typer.Option(help="Stop reading after this many idle seconds.")]
    = 3.0,
) -> None:
    """Read the answer events and print what was spent and what the caches saved."""
    from clawstream.streams.subscriber import read_topic
    from clawstream.streams.topics import ANSWERS, EVENTS

    try:
        since_ms = parse_since(since, int(time.time() * 1000)) if since else None
    except ValueError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from exc
    bootstrap = Settings().bootstrap_servers
    answers = (cast(AgentAnswer, record) for name, record in read_topic(
        bootstrap, ANSWERS.name, timeout_s=idle) if name == AGENT_ANSWER)
    events = (cast(AgentEvent, record) for name, record in read_topic(
        bootstrap, EVENTS.name, timeout_s=idle) if name == AGENT_EVENT)
    print_report(summarise(answers, since_ms=since_ms, tenant=tenant, events=events),
                 console)


def layers_table(layers: list[CacheUsage], title: str) -> Table:
    """Hits, misses, hit rate and savings per cache layer (also used by bench cache)."""
    table = Table("cache layer", "hits", "misses", "hit rate", "saved tokens", "saved USD",
                  title=title, title_justify="left")
    for layer in layers:
        rate = hit_rate(layer)
        table.add_row(layer["layer"], str(layer["hits"]), str(layer["misses"]),
                      "-" if rate is None else f"{rate:.0%}", str(layer["saved_tokens"]),
                      f"{layer['saved_cost_usd']:.6f}")
    return table


def print_report(report: CostReport, out: Console) -> None:
    t = report.total
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(report.statuses.items())) or "none"
    out.print(f"[bold]{t.interactions}[/] interactions ({statuses}); spent "
              f"[bold]${t.cost_usd:.6f}[/] for {t.prompt_tokens}+{t.completion_tokens} "
              f"tokens; caches saved [bold]${t.saved_cost_usd:.6f}[/] ({t.saved_tokens} "
              f"tokens, {t.savings_ratio:.0%} of the uncached cost); "
              f"${t.cost_per_interaction:.6f} per interaction")
    if report.late.interactions:
        late = report.late
        out.print(f"plus [bold]${late.cost_usd:.6f}[/] ({late.prompt_tokens}+"
                  f"{late.completion_tokens} tokens) for {late.interactions} step run(s) whose "
                  "results came after their answers (repeats after a crash, late attempts)")
    out.print(layers_table(report.layers, "savings per cache layer"))
    tenants = Table("tenant", "interactions", "tokens in", "tokens out", "spent USD",
                    "saved USD", "USD / interaction", title="by tenant", title_justify="left")
    for name, totals in sorted(report.by_tenant.items()):
        tenants.add_row(name, str(totals.interactions), str(totals.prompt_tokens),
                        str(totals.completion_tokens), f"{totals.cost_usd:.6f}",
                        f"{totals.saved_cost_usd:.6f}", f"{totals.cost_per_interaction:.6f}")
    out.print(tenants)
