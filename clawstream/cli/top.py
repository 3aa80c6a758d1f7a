"""``clawstream top``: the stack's figures from Prometheus, in a terminal, for a person
without Grafana.

Why through Prometheus and not by scraping the processes: percentiles and rates need
history (a histogram's buckets over a window), which Prometheus keeps; every figure here
is one PromQL query over the metrics of :mod:`clawstream.metrics`, the same ones the
Grafana dashboard plots. ``--once`` prints one frame and exits (for scripts and tests).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated

import httpx
import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from clawstream.config import Settings
from clawstream.deploy.local.prometheus import url as local_prometheus

ERROR_EVENTS = "retry_scheduled|step_timed_out|dead_lettered|request_rejected|deadline_exceeded"


@dataclass(frozen=True)
class Figure:
    """One row group of the view: a PromQL query, the labels that name its rows, a unit."""

    title: str
    promql: str
    labels: tuple[str, ...]
    unit: str


def _quantile(q: float, metric: str, by: str, window: str) -> str:
    return (f"histogram_quantile({q}, sum by (le{', ' + by if by else ''}) "
            f"(rate({metric}_bucket[{window}])))")


def figures(window: str) -> list[Figure]:
    """Every figure ``top`` shows, over ``window`` (a PromQL duration such as ``5m``)."""
    latency = "clawstream_request_latency_seconds"
    return [
        *(Figure(f"request latency p{int(q * 100)}", _quantile(q, latency, "", window), (),
                 "s") for q in (0.5, 0.95, 0.99)),
        Figure("answers/s", f"sum by (status) (rate(clawstream_answers_total[{window}]))",
               ("status",), "/s"),
        Figure("queue wait p95", _quantile(0.95, "clawstream_queue_wait_seconds",
                                           "topic, lane", window), ("topic", "lane"), "s"),
        Figure("step run p95", _quantile(0.95, "clawstream_step_run_seconds",
                                         "step_type, name", window),
               ("step_type", "name"), "s"),
        Figure("tokens/s", "sum by (pool, direction) "
               f"(rate(clawstream_step_tokens_total[{window}]))", ("pool", "direction"), "/s"),
        # Totals, not increase(): a tenant's first request creates its series, and
        # increase() over a series' first samples misses that first request's cost.
        Figure("cost since start", "sum by (tenant) (clawstream_tenant_cost_usd_total)",
               ("tenant",), "USD"),
        Figure("errors", "sum by (event_type) (increase(clawstream_events_total"
               f'{{event_type=~"{ERROR_EVENTS}"}}[{window}]))', ("event_type",), ""),
        Figure("dead letters", "sum by (source_topic) "
               f"(increase(clawstream_dead_letters_total[{window}]))", ("source_topic",), ""),
        Figure("consumer lag", "sum by (topic) (clawstream_consumer_lag)", ("topic",), ""),
    ]


Row = tuple[str, str, float]
"""(figure title, the row's label values, value)."""


def read(prometheus_url: str, window: str, timeout_s: float = 5.0) -> list[Row]:
    """Ask Prometheus for every figure; a figure with no data yet has no rows."""
    rows: list[Row] = []
    with httpx.Client(base_url=prometheus_url, timeout=timeout_s) as client:
        for fig in figures(window):
            response = client.get("/api/v1/query", params={"query": fig.promql})
            response.raise_for_status()
            for series in response.json()["data"]["result"]:
                value = float(series["value"][1])
                if value != value:  # NaN: a quantile with no observations in the window
                    continue
                name = " ".join(series["metric"].get(label, "") for label in fig.labels)
                rows.append((fig.title, name, value))
    return rows


def _format(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"
    if unit == "USD":
        return f"${value:.6f}"
    return f"{value:.2f}{unit}" if unit else f"{value:.0f}"


def render(rows: list[Row], window: str, source: str) -> Table:
    units = {f.title: f.unit for f in figures(window)}
    table = Table(title=f"clawstream — last {window}, from {source}", expand=False)
    table.add_column("figure", style="bold cyan")
    table.add_column("of")
    table.add_column("value", justify="right")
    for title, name, value in rows:
        table.add_row(title, name, _format(value, units[title]))
    if not rows:
        table.add_row("no data yet", "", "")
    return table


def top(
    once: Annotated[bool, typer.Option(help="Print one frame and exit.")] = False,
    window: Annotated[str, typer.Option(help="PromQL window of rates and percentiles.")
                      ] = "5m",
    interval: Annotated[float, typer.Option(help="Seconds between frames.")] = 2.0,
    url: Annotated[str | None, typer.Option(help="Prometheus; default: the local stack's.")
                   ] = None,
) -> None:
    """Live p50/p95/p99, queue wait, tokens/s, cost, errors and lag, from Prometheus."""
    source = url or local_prometheus(Settings())
    console = Console()
    try:
        if once:
            console.print(render(read(source, window), window, source))
            return
        with Live(console=console, auto_refresh=False) as live:
            while True:
                live.update(Group(render(read(source, window), window, source)), refresh=True)
                time.sleep(interval)
    except httpx.HTTPError as exc:
        console.print(f"[red]Prometheus at {source} did not answer: {exc}[/red] "
                      "(is the stack up, with CLAWSTREAM_PROMETHEUS_ENABLED on?)")
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        return
