"""Which version of its agent a request runs: the routing decision, as a pure rule.

A conversation is routed once, at its first request, and stays on that version (the pin
in its state, ``agent_versions``) as long as the agent's routing rule still names it
(current or candidate). A *new* conversation goes to the candidate when a hash of its id
falls under the rule's share, else to the current version; a conversation that was already
talking before any pin existed goes to the current version (a canary takes a share of new
conversations, not of running ones). A pin the rule no longer names (a rollback, a
promotion, a version no longer deployed) moves to the current version at the next request.
A request's ``agent_version`` option (an eval of one version) runs that version for this
request only and leaves the pin alone.

Every decision that creates or moves a pin, or follows an explicit request, is a
``version_routed`` event; a request that stays where its conversation is adds nothing.
Deterministic: the same state, request and rules route the same way on any worker.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from clawstream.processors.agents import AgentSpec, Catalog
from clawstream.processors.canary.rule import Route, routes_from
from clawstream.processors.records import Output, about, event
from clawstream.processors.state import Conversation
from clawstream.processors.turns import Rules
from clawstream.schemas.records import AgentRequest

VERSION_OPTION = "agent_version"


def bucket(agent: str, conversation_id: str) -> float:
    """Where a conversation falls in [0, 1) for this agent's canaries: a hash of its id
    (salted with the agent's name, so one conversation is not every canary's subject).
    Raising the share keeps the conversations already under it on the candidate."""
    digest = hashlib.sha256(f"{agent}\x00{conversation_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass
class Routed:
    """The version a request runs, or why it cannot run, and the decision's events."""

    agent: AgentSpec | None
    problem: str = ""
    outputs: list[Output] = field(default_factory=list)


def route_request(conv: Conversation, req: AgentRequest, now_ms: int, rules: Rules) -> Routed:
    """Pick the version for ``req`` (pins ``conv`` when the conversation is routed)."""
    name = req["agent"]
    catalog = rules.catalog
    versions = catalog.versions(name)
    if not versions:
        return Routed(None, f"unknown agent {name!r}")
    requested = req["options"].get(VERSION_OPTION)
    if requested:
        spec = catalog.agent(name, requested)
        if spec is None:
            return Routed(None, f"agent {name!r} has no version {requested!r} (it has "
                                f"{', '.join(versions)})")
        return Routed(spec, outputs=[_event(req, now_ms, requested, "requested", None, None)])
    route = rules.routes.get(name, Route())
    current, candidate = named_versions(route, versions)
    pins = conv.setdefault("agent_versions", {})
    pinned = pins.get(name)
    if pinned is not None and pinned in (current, candidate):
        return Routed(_spec(catalog, name, pinned))
    point = bucket(name, req["conversation_id"])
    if pinned is None and conv["exchanges"]:
        version, reason = current, "existing"
    elif candidate is not None and point * 100 < route.share:
        version, reason = candidate, "new" if pinned is None else "moved"
    else:
        version, reason = current, "new" if pinned is None else "moved"
    pins[name] = version
    return Routed(_spec(catalog, name, version),
                  outputs=[_event(req, now_ms, version, reason, route, point, pinned,
                                  current, candidate)])


def named_versions(route: Route, versions: tuple[str, ...]) -> tuple[str, str | None]:
    """The rule's current and candidate, among the versions deployed (a rule naming one
    that is not falls back to the live version / no candidate)."""
    current = route.current if route.current in versions else versions[0]
    candidate = (route.candidate if route.canary and route.candidate in versions
                 and route.candidate != current else None)
    return current, candidate


def _spec(catalog: Catalog, name: str, version: str) -> AgentSpec:
    spec = catalog.agent(name, version)
    assert spec is not None  # one of catalog.versions(name)
    return spec


def _event(req: AgentRequest, now_ms: int, version: str, reason: str, route: Route | None,
           point: float | None, previous: str | None = None, current: str | None = None,
           candidate: str | None = None) -> Output:
    detail: dict[str, object] = {"version": version, "reason": reason}
    if route is not None:
        detail.update({"current": current or "", "candidate": candidate or "",
                       "share": f"{route.share:g}" if candidate else "0",
                       "bucket": f"{(point or 0.0) * 100:.3f}"})
    if previous:
        detail["previous"] = previous
    return event("version_routed", now_ms, about(req), agent_version=version, detail=detail)


def with_routes(rules: Rules, flags: Mapping[str, str]) -> Rules:
    """``rules`` with the routing rules among ``flags`` (a worker's flag snapshot)."""
    routes = routes_from(flags)
    return rules if routes == rules.routes else replace(rules, routes=routes)
