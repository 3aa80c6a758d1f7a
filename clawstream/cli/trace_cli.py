"""``clawstream trace`` (one request's or conversation's timeline) and ``clawstream replay``
(decoded records to JSONL), both from the topics alone."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from clawstream.cli.cost import parse_since
from clawstream.cli.reading import planned, read_with_progress
from clawstream.cli.rebuild_cli import compare
from clawstream.config import Settings
from clawstream.streams.masking import mask, mask_text
from clawstream.streams.replay import Selection, select, write_jsonl, write_parquet
from clawstream.streams.trace import (
    TRACE_TOPICS,
    Trace,
    all_partitions,
    build,
    find_conversation,
    partitions_of,
    plan,
    read_range,
)


def render(trace: Trace, title: str, raw: bool = False) -> Table:
    table = Table(title=title, expand=False)
    for column in ("+ms", "what", "step", "try", "status", "detail"):
        table.add_column(column, justify="right" if column in ("+ms", "try") else "left")
    t0 = trace.entries[0].at_ms if trace.entries else 0
    for e in trace.entries:
        table.add_row(str(e.at_ms - t0), e.what, (e.step_id or "")[-24:],
                      "" if e.attempt is None else str(e.attempt), e.status,
                      e.detail if raw else mask_text(e.detail))
    for step, attempt, name in trace.in_flight:
        if trace.answered:  # e.g. past the deadline: the attempt was given up
            table.add_row("", "[yellow]incomplete[/yellow]", step[-24:], str(attempt),
                          "no result", f"{name}: issued, never finished")
        else:
            table.add_row("", "[yellow]in flight[/yellow]", step[-24:], str(attempt),
                          "[yellow]running[/yellow]", f"{name}: issued, no result yet")
    return table


def trace(
    request_id: Annotated[str | None, typer.Argument(help="The request to trace.")] = None,
    conversation: Annotated[str | None, typer.Option(
        help="The request's conversation: reads only its partition (fast). Alone: every "
        "request of the conversation.")] = None,
    since: Annotated[str, typer.Option(help="How far back to read: 30m, 2h, 7d or an ISO "
                                       "time.")] = "24h",
    raw: Annotated[bool, typer.Option(help="Show personal data unmasked (emails, phone "
                                      "and card numbers, IBANs).")] = False,
) -> None:
    """The timeline of a request rebuilt from the topics: request, decisions, every step
    attempt with its times, cache, tokens and cost, retries, dead letters, the answer; steps
    issued and not finished show as in flight."""
    if request_id is None and conversation is None:
        raise typer.BadParameter("give a REQUEST_ID, --conversation, or both")
    console = Console()
    settings = Settings()
    since_ms = parse_since(since, int(time.time() * 1000))
    if conversation is None:
        assert request_id is not None
        conversation = find_conversation(settings.bootstrap_servers, request_id, since_ms)
        if conversation is None:
            console.print(f"[red]no request {request_id} on the request topics since {since}"
                          "[/red]")
            raise typer.Exit(1)
    ranges = partitions_of(settings.bootstrap_servers, conversation, TRACE_TOPICS)
    result = build(list(read_range(settings.bootstrap_servers, ranges, since_ms,
                                   conversation)), request_id)
    if not result.entries:
        console.print(f"[red]nothing about {request_id or conversation} since {since}[/red]")
        raise typer.Exit(1)
    console.print(render(result, f"{request_id or 'conversation'} in {conversation}", raw))


def replay(
    out: Annotated[Path | None, typer.Option("--out", "-o", help="The file to write: "
                                             ".parquet for Parquet, anything else JSON "
                                             "lines.")] = None,
    conversation: Annotated[str | None, typer.Option(
        help="One conversation: read only its partition.")] = None,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's requests.")] = None,
    agent: Annotated[str | None, typer.Option(help="Only this agent's requests.")] = None,
    since: Annotated[str, typer.Option(help="From: 30m, 2h, 7d or an ISO time.")] = "24h",
    until: Annotated[str | None, typer.Option(help="To (default: now), same forms.")] = None,
    raw: Annotated[bool, typer.Option(help="Export personal data unmasked.")] = False,
    rebuild: Annotated[str | None, typer.Option(
        metavar="CONVERSATION", help="Run the coordinator's rules again over this "
        "conversation's events (all of them) and compare the state they arrive at with the "
        "live tables and answers; exit 1 on a difference.")] = None,
) -> None:
    """Decoded records of every conversation-scoped topic to JSONL or Parquet, by
    conversation, tenant, agent and time range, with progress over the range read; or,
    with --rebuild, the event-sourcing check of one conversation."""
    if rebuild is not None:
        if out is not None or tenant is not None or agent is not None:
            raise typer.BadParameter("--rebuild CONVERSATION reads all of that conversation's "
                                     "events: no --out, --tenant or --agent with it")
        raise typer.Exit(compare(rebuild, raw))
    if out is None:
        raise typer.BadParameter("give --out FILE (or --rebuild CONVERSATION)")
    settings = Settings()
    now = int(time.time() * 1000)
    since_ms = parse_since(since, now)
    until_ms = parse_since(until, now) if until else None
    if conversation is not None:
        ranges = partitions_of(settings.bootstrap_servers, conversation, TRACE_TOPICS)
    else:
        ranges = all_partitions(settings.bootstrap_servers, TRACE_TOPICS)
    todo = plan(settings.bootstrap_servers, ranges, since_ms, until_ms)
    console = Console(stderr=True)
    found = select(read_with_progress(settings.bootstrap_servers, todo, conversation, console),
                   Selection(conversation, tenant, agent))
    if not raw:
        found = (replace(f, record=mask(f.record)) for f in found)
    if out.suffix == ".parquet":
        written = write_parquet(found, out)
    else:
        with out.open("w") as sink:
            written = write_jsonl(found, sink)
    console.print(f"{written} record(s) of {planned(todo)} read -> {out}")
