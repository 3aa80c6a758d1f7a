"""Changing a routing rule, with the event that says so.

``clawstream canary set|promote|rollback`` and the watcher's automatic rollback all go
through :func:`apply_route`: the rule is written to the control topic (every worker
applies it within a couple of seconds) and a ``canary_*`` event on ``agent.events`` says
who changed what and why, keyed by the agent, so an analyst replays a canary's history
next to the conversations it routed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import cast

from clawstream.processors.canary.rule import Route, route_flag
from clawstream.processors.flow.flags import set_flag
from clawstream.processors.keys import content_hash
from clawstream.schemas.names import AGENT_EVENT
from clawstream.schemas.records import AgentEvent, ControlFlag
from clawstream.streams.publisher import Publisher
from clawstream.streams.topics import EVENTS

CANARY_EVENTS = ("canary_set", "canary_promoted", "canary_rolled_back")


def canary_event(kind: str, agent: str, route: Route, by: str, at_ms: int,
                 detail: Mapping[str, object] | None = None) -> AgentEvent:
    """An audit event about an agent's routing (no conversation: it concerns them all)."""
    body = {"event_type": kind, "at_ms": at_ms, "request_id": None, "conversation_id": None,
            "trace_id": None, "step_id": None, "agent": agent,
            "agent_version": route.candidate or route.current, "worker": None,
            "detail": {"rule": route.format(), "by": by, "current": route.current or "",
                       "candidate": route.candidate or "", "share": f"{route.share:g}",
                       **{k: str(v) for k, v in (detail or {}).items()}}}
    return cast(AgentEvent, {"event_id": content_hash(body)[:32], **body})


def apply_route(bootstrap: str, agent: str, route: Route, kind: str, by: str,
                detail: Mapping[str, object] | None = None) -> tuple[ControlFlag, AgentEvent]:
    """Publish the rule (acked) and then its event."""
    flag = set_flag(bootstrap, route_flag(agent), route.format(), by)
    record = canary_event(kind, agent, route, by, int(time.time() * 1000), detail)
    with Publisher(bootstrap) as publisher:
        publisher.publish(EVENTS.name, f"canary:{agent}", AGENT_EVENT, record).result()
    return flag, record
