"""Flow control on the coordinator's side: the entrance gate and the step policy.

The gate runs before a new request starts: per-user and per-tenant rates (counted at
the request's arrival time), the tenant's
spend window and the conversation's budgets; a request over any of them is answered
``rejected`` at once, with its reason and a retry hint (see :mod:`limits`).

The step policy runs over the outputs of each coordinator decision, before they are sent,
so the coordinator's own rules stay unaware of flags:

- a model step is routed to the pool of its agent's task class (or the smallest pool under
  ``degrade``, or another pool when its own is switched off), and a batch-lane model step
  goes to the batch inference topic;
- a step may be *cut*: a tool step marked expensive under ``degrade``, a switched-off tool,
  or any step once the conversation's step or token budget is spent. A cut step gets a
  synthesized result from worker ``flow-control`` (so it shows in the timeline) and the
  request's answer is marked ``degraded`` with the reasons;
- answered exchanges are archived for the recall tool.

The boundary: :func:`route_and_cut` is pure (the decision, a snapshot of the flags, the
settings and the time in; the routed decision and the exchanges to archive out), like the
coordinator's rules, so a replay routes the same way. Only :func:`gate` (Redis buckets and
spend windows) and :func:`archive` (the recall archive in Redis) do I/O, and the
coordinator calls them around the pure part.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from clawstream.config import Settings
from clawstream.processors.conversation import Decision, Rules, on_result
from clawstream.processors.failopen import fail_open
from clawstream.processors.flow import budgets, limits, recall
from clawstream.processors.flow.flags import FlagView
from clawstream.processors.flow.pools import NoPoolAvailable, route
from clawstream.processors.records import Output
from clawstream.processors.state import ActiveRequest, Conversation, Exchange
from clawstream.processors.turns import active_agent
from clawstream.schemas.records import (
    AgentAnswer,
    AgentRequest,
    StepCommand,
    StepResult,
    empty_usage,
)
from clawstream.streams.topics import INFERENCE_REQUESTS, inference_topic

FLOW_WORKER = "flow-control"


async def gate(req: AgentRequest, conv: Conversation | None, settings: Settings,
               flags: FlagView, redis: aioredis.Redis) -> limits.Rejection | None:
    """Entrance checks for a request that is not a duplicate (I/O: Redis)."""
    spent = conv.get("flow_spent", budgets.NOTHING_SPENT) if conv else budgets.NOTHING_SPENT
    reason = budgets.exhausted(spent, budgets.conversation_budget(settings, req["options"]))
    if reason is not None:
        return limits.Rejection("conversation_budget", reason, 0.0)
    return await fail_open("entrance", _redis_gate(req, settings, flags, redis), None)


async def _redis_gate(req: AgentRequest, settings: Settings, flags: FlagView,
                      redis: aioredis.Redis) -> limits.Rejection | None:
    """A sub-agent's request is part of a request already let in: it is not a new arrival
    for the per-user and per-tenant entrance limits (a fan-out of 16 would trip them), but
    the tenant's spend window still applies."""
    rejection = None
    if req.get("delegation") is None:
        rejection = await limits.check_entrance(limits.arrival_windows(redis, settings),
                                                settings, flags, req)
    return rejection or await limits.check_tenant_budget(redis, settings, flags,
                                                        req["tenant_id"])


def _cut_reason(conv: Conversation, active: ActiveRequest, cmd: StepCommand,
                flags: FlagView, settings: Settings, rules: Rules) -> str | None:
    budget = budgets.conversation_budget(settings, active["request"]["options"])
    reason = budgets.exhausted(conv.get("flow_spent", budgets.NOTHING_SPENT), budget)
    if reason is not None:
        return reason
    tool = cmd["tool_call"]
    if tool is None:
        return None
    if flags.tool_killed(tool["name"]):
        return f"tool {tool['name']} is switched off"
    if flags.degrade and _expensive(active, cmd, rules):
        return f"degrade: expensive tool {tool['name']} skipped"
    return None


def _expensive(active: ActiveRequest, cmd: StepCommand, rules: Rules) -> bool:
    """The agent's plan marks the step expensive."""
    agent = active_agent(rules.catalog, active)
    plan = agent.plan if agent else None
    index = cmd["step_index"]
    return bool(plan and index < len(plan) and plan[index].expensive)


def _skipped_result(cmd: StepCommand, reason: str, now: int) -> StepResult:
    return {"step_id": cmd["step_id"], "step_index": cmd["step_index"],
            "step_type": cmd["step_type"], "attempt": cmd["attempt"],
            "request_id": cmd["request_id"], "conversation_id": cmd["conversation_id"],
            "trace_id": cmd["trace_id"], "status": "ok", "output": "", "error": None,
            "worker": FLOW_WORKER, "issued_at_ms": cmd["issued_at_ms"], "started_at_ms": now,
            "finished_at_ms": now, "cache_hit": False, "model": None, "backend": None,
            "usage": empty_usage(), "cache": [], "tool_calls": [], "finish_reason": None,
            "answer": None, "effects": []}


def count_result(conv: Conversation | None, res: StepResult) -> None:
    """Add a worker's step result to the conversation's lifetime spend (budgets): every
    result of the running request, also a late or repeated attempt's, since its work was
    done."""
    active = conv["active"] if conv else None
    if (conv is None or active is None or res["worker"] == FLOW_WORKER
            or active["request"]["request_id"] != res["request_id"]):
        return
    spent = conv.setdefault("flow_spent", {"steps": 0, "tokens": 0})
    spent["steps"] += 1
    spent["tokens"] += budgets.spent_tokens(res["usage"])


def _route_model(conv: Conversation, active: ActiveRequest, cmd: StepCommand, out: Output,
                 settings: Settings, flags: FlagView, rules: Rules) -> Output | str:
    agent = active_agent(rules.catalog, active)
    task_class = agent.task_class if agent else "chat"
    try:
        chosen = route(task_class, settings, flags)
    except NoPoolAvailable as exc:
        return str(exc)
    call = cmd["model_call"]
    assert call is not None
    call["model"] = chosen.pool
    if chosen.degraded_reason:
        _note_degraded(conv, cmd["request_id"], chosen.degraded_reason)
    topic = inference_topic(cmd["lane"]).name if out.topic == INFERENCE_REQUESTS.name \
        else out.topic
    return Output(topic, out.key, out.schema, cmd)


def _note_degraded(conv: Conversation, request_id: str, reason: str) -> None:
    notes = conv.setdefault("flow_degraded", {}).setdefault(request_id, [])
    if reason not in notes:
        notes.append(reason)


def _fix_event(out: Output, cmd_pool: dict[str, str]) -> Output:
    """``step_issued`` events name the pool the step was routed to."""
    rec = out.event
    if rec and rec["event_type"] == "step_issued" and rec["step_id"] in cmd_pool:
        pool = cmd_pool[rec["step_id"]]
        rec["detail"] = {**rec["detail"], "name": pool, "pool": pool}
    return out


@dataclass
class Routed:
    """The decision to send, and the answered exchanges to archive for the recall tool."""

    decision: Decision
    archive: list[tuple[str, Exchange]] = field(default_factory=list)


def route_and_cut(decision: Decision, rules: Rules, settings: Settings, flags: FlagView,
                  now: int) -> Routed:
    """Route, cut and mark the decision's outputs (see the module docstring). Pure."""
    conv = decision.conversation
    if conv is None:
        return Routed(decision)
    queue = list(decision.outputs)
    final: list[Output] = []
    archive = list(decision.archive)
    pools: dict[str, str] = {}
    while queue:
        out = queue.pop(0)
        cmd = out.command
        active = conv["active"]
        if cmd is not None and active is not None:
            reason = _cut_reason(conv, active, cmd, flags, settings, rules)
            routed = None if reason else (
                _route_model(conv, active, cmd, out, settings, flags, rules)
                if cmd["model_call"] else out)
            if isinstance(routed, str):
                reason = routed
            if reason is not None:
                _note_degraded(conv, cmd["request_id"], reason)
                cut = on_result(conv, _skipped_result(cmd, reason, now), now, rules)
                conv = cut.conversation if cut.conversation is not None else conv
                queue = cut.outputs + queue
                archive += cut.archive
                continue
            assert routed is not None and not isinstance(routed, str)
            if cmd["model_call"]:
                pools[cmd["step_id"]] = cmd["model_call"]["model"]
            final.append(routed)
            continue
        if out.answer is not None:
            _mark_degraded(conv, out.answer)
        final.append(out)
    # A step's ``step_issued`` event comes before its command: named once all are routed.
    final = [_fix_event(out, pools) for out in final]
    return Routed(Decision(conv, final, decision.dedup), archive)


def _mark_degraded(conv: Conversation, answer: AgentAnswer) -> None:
    """An answer of a request that flow control cut or rerouted says so, and why."""
    notes = conv.get("flow_degraded", {}).pop(answer["request_id"], None)
    if notes and answer["status"] in ("ok", "failed"):
        answer["status"] = "degraded"
        answer["reason"] = "; ".join(notes)


async def archive(redis: aioredis.Redis, exchanges: Iterable[tuple[str, Exchange]]) -> None:
    """Append answered exchanges to their conversations' recall archives (I/O: Redis)."""
    for conversation_id, exchange in exchanges:
        await fail_open("recall_archive",
                        recall.archive_exchange(redis, conversation_id, exchange), None)
