"""``clawstream canary start|promote|rollback|status``: versions of an agent side by side.

Every command writes the agent's routing rule (``route.agent.<name>`` on the control
topic) and a ``canary_*`` event through :func:`clawstream.processors.canary.control.apply_route`,
the same path the workers' automatic rollback takes, so a canary's whole history is on
``agent.events`` whoever changed it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Annotated, cast

import typer
from rich.console import Console
from rich.table import Table

from clawstream.cli.eval_run import latest_pass_rates
from clawstream.config import Settings
from clawstream.processors.canary.rule import Route, parse_route, route_flag
from clawstream.processors.canary.stats import VersionStats, by_version
from clawstream.schemas.names import AGENT_ANSWER, AGENT_EVENT
from clawstream.schemas.records import AgentAnswer, AgentEvent

app = typer.Typer(help="Canaries: a candidate version of an agent takes a share of new "
                  "conversations, is compared, then promoted or rolled back.",
                  no_args_is_help=True)
console = Console()


def _current_route(settings: Settings, agent: str) -> Route:
    from clawstream.processors.flow.flags import read_flags

    record = read_flags(settings.bootstrap_servers).get(route_flag(agent))
    if record is None or not str(record["value"]).strip():
        return Route()
    try:
        return parse_route(str(record["value"]))
    except ValueError:
        return Route()


def _deployed(settings: Settings, agent: str) -> tuple[str, ...]:
    """The agent's versions as the workers load them (the same modules and settings)."""
    from clawstream.processors.registry import load_registry

    return load_registry(settings).versions(agent)


def _fail(message: str, code: int = 2) -> typer.Exit:
    console.print(f"[red]{message}[/]")
    return typer.Exit(code)


def start_route(existing: Route, live: str, candidate: str, share: float, *,
                current: str | None, margin: float | None, p95_margin: float | None,
                min_sample: int | None, auto_rollback: bool, now_ms: int) -> Route:
    """The rule ``canary start`` writes: ``share`` is a fraction of new conversations
    (0.2 = 20 %); the current version is the one asked for, else the one the rule already
    routes to (a past promotion), else the version the module declares live."""
    if not 0 < share <= 1:
        raise ValueError(f"share is a fraction of new conversations in (0, 1], got {share:g}")
    route = Route(current=current or existing.current or live, candidate=candidate,
                  share=round(share * 100, 4), since_ms=now_ms, max_error_margin=margin,
                  p95_margin=p95_margin, min_sample=min_sample, auto_rollback=auto_rollback)
    return parse_route(route.format())  # the same checks a worker's reader applies


@app.command("start")
def start(
    agent: str,
    candidate: Annotated[str, typer.Option(help="The version to try.")],
    share: Annotated[float, typer.Option(help="Fraction of new conversations (0.2 = 20 %).")]
    = 0.1,
    current: Annotated[str | None, typer.Option(help="The version everybody else gets "
                                                "(default: the live one).")] = None,
    margin: Annotated[float | None, typer.Option(help="Roll back when the candidate's "
                                                 "failed+degraded rate exceeds the current's "
                                                 "by more (0.1 = ten points).")] = None,
    p95_margin: Annotated[float | None, typer.Option(help="... or its p95 latency by more "
                                                     "than this fraction.")] = None,
    min_sample: Annotated[int | None, typer.Option(help="Requests per version before "
                                                   "judging.")] = None,
    auto_rollback: Annotated[bool, typer.Option(help="Workers roll a failing candidate "
                                                "back.")] = True,
    by: str = "cli",
) -> None:
    """Send a share of NEW conversations to a candidate version (sticky per conversation)."""
    from clawstream.processors.canary.control import apply_route

    settings = Settings()
    versions = _deployed(settings, agent)
    if not versions:
        raise _fail(f"unknown agent {agent!r}")
    for name in (candidate, current):
        if name is not None and name not in versions:
            raise _fail(f"agent {agent!r} has no version {name!r} (deployed: "
                        f"{', '.join(versions)})")
    try:
        route = start_route(_current_route(settings, agent), versions[0], candidate, share,
                            current=current, margin=margin, p95_margin=p95_margin,
                            min_sample=min_sample, auto_rollback=auto_rollback,
                            now_ms=int(time.time() * 1000))
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    apply_route(settings.bootstrap_servers, agent, route, "canary_set", by)
    console.print(f"route.agent.{agent} = {route.format()}")


@app.command("promote")
def promote(agent: str, by: str = "cli") -> None:
    """The candidate becomes the current version of every conversation."""
    from clawstream.processors.canary.control import apply_route

    settings = Settings()
    route = _current_route(settings, agent)
    if route.candidate is None:
        raise _fail(f"agent {agent!r} has no canary to promote (rule: {route.format()})")
    apply_route(settings.bootstrap_servers, agent, route.promoted(), "canary_promoted", by,
                {"promoted": route.candidate, "previous": route.current or ""})
    console.print(f"route.agent.{agent} = {route.promoted().format()}")


@app.command("rollback")
def rollback(agent: str, reason: str = "by hand", by: str = "cli") -> None:
    """The candidate takes nothing more; its conversations move back to the current."""
    from clawstream.processors.canary.control import apply_route

    settings = Settings()
    route = _current_route(settings, agent)
    if route.candidate is None:
        raise _fail(f"agent {agent!r} has no canary to roll back (rule: {route.format()})")
    apply_route(settings.bootstrap_servers, agent, route.rolled_back(), "canary_rolled_back",
                by, {"reason": reason, "rolled_back": route.candidate})
    console.print(f"route.agent.{agent} = {route.rolled_back().format()}")


def stats_table(stats: dict[str, VersionStats], route: Route,
                eval_rates: dict[str, float] | None = None) -> Table:
    """Per version, side by side: status mix, degraded rate, latency, tokens, cost, cache,
    and the pass rate of its latest stored eval (``clawstream eval --version``)."""
    rates = eval_rates or {}
    table = Table("version", "role", "requests", "ok", "degraded", "failed",
                  "failed+degraded", "p50 ms", "p95 ms", "tokens / req", "USD / req",
                  "cache hit rate", "eval pass rate", title="answers since the rule was set",
                  title_justify="left")
    order = [v for v in (route.current, route.candidate) if v] + sorted(
        v for v in {*stats, *rates} if v not in (route.current, route.candidate))
    for version in order:
        s = stats.get(version, VersionStats())
        role = ("candidate" if version == route.candidate else
                "current" if version == route.current else "")
        hit = s.hit_rate()
        table.add_row(version, role, str(s.interactions), str(s.statuses["ok"]),
                      str(s.statuses["degraded"]), str(s.statuses["failed"]),
                      f"{s.bad_rate:.1%}", f"{s.p(0.5):.0f}", f"{s.p(0.95):.0f}",
                      f"{s.tokens_per_interaction:.1f}", f"{s.cost_per_interaction:.6f}",
                      "-" if hit is None else f"{hit:.0%}",
                      f"{rates[version]:.0%}" if version in rates else "-")
    return table


def events_table(events: Iterable[AgentEvent]) -> Table:
    table = Table("at", "event", "rule", "by", "reason", title="canary events",
                  title_justify="left")
    for e in events:
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["at_ms"] / 1000))
        table.add_row(at, e["event_type"], e["detail"].get("rule", ""),
                      e["detail"].get("by", ""), e["detail"].get("reason", ""))
    return table


@app.command("status")
def status(agent: str,
           idle: Annotated[float, typer.Option(help="Stop reading after this many idle "
                                               "seconds.")] = 3.0) -> None:
    """The rule, each version's figures side by side, and the canary's events."""
    from clawstream.processors.canary.control import CANARY_EVENTS
    from clawstream.streams.subscriber import read_topic
    from clawstream.streams.topics import ANSWERS, EVENTS

    settings = Settings()
    route = _current_route(settings, agent)
    console.print(f"route.agent.{agent} = {route.format()}  (deployed: "
                  f"{', '.join(_deployed(settings, agent)) or 'none'})")
    answers = (cast(AgentAnswer, r) for n, r in read_topic(
        settings.bootstrap_servers, ANSWERS.name, timeout_s=idle) if n == AGENT_ANSWER)
    stats = by_version(answers, agent, since_ms=route.since_ms,
                       exclude_tenant=settings.eval_tenant)
    console.print(stats_table(stats, route,
                              latest_pass_rates(settings.state_dir / "evals", agent)))
    everything = (cast(AgentEvent, r) for n, r in read_topic(
        settings.bootstrap_servers, EVENTS.name, timeout_s=idle) if n == AGENT_EVENT)
    events = [e for e in everything
              if e["event_type"] in CANARY_EVENTS and e["agent"] == agent]
    console.print(events_table(events))
