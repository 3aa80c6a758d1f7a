"""Flow control on the coordinator's side: the entrance gate and the step policy.

The gate runs before a new request starts: per-user and per-tenant buckets, the tenant's
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
"""

from __future__ import annotations

import time
from typing import Any

from clawstream.config import Settings
from clawstream.processors.agents import get_agent
from clawstream.processors.conversation import Decision, on_result
from clawstream.processors.failopen import fail_open
from clawstream.processors.flow import budgets, limits, recall, runtime
from clawstream.processors.flow.buckets import TokenBuckets
from clawstream.processors.flow.flags import FlagView
from clawstream.processors.flow.pools import NoPoolAvailable, route
from clawstream.processors.policy import Policy
from clawstream.processors.records import Output, answer, event
from clawstream.schemas.names import AGENT_ANSWER, AGENT_EVENT, STEP_COMMAND
from clawstream.streams.topics import INFERENCE_REQUESTS, inference_topic

Record = dict[str, Any]
FLOW_WORKER = "flow-control"


def _event(kind: str, req: Record, detail: dict[str, str]) -> Output:
    return event(kind, int(time.time() * 1000), req, detail=detail)


def rejection_outputs(req: Record, rejection: limits.Rejection) -> list[Output]:
    """A ``rejected`` answer with the reason and retry hint, and its audit event."""
    now = int(time.time() * 1000)
    return [answer({"request": req}, "rejected", "", rejection.reason, now, "none",
                   reason_kind=rejection.kind, retry_after_s=rejection.retry_after_s),
            _event("request_rejected", req, {"reason": rejection.reason, "kind": rejection.kind,
                                             "retry_after_s": f"{rejection.retry_after_s:.3f}"})]


async def gate(req: Record, conv: Record | None, settings: Settings) -> limits.Rejection | None:
    """Entrance checks for a request that is not a duplicate."""
    flags = runtime.flags()
    spent = (conv or {}).get("flow_spent", {})
    reason = budgets.exhausted(spent, budgets.conversation_budget(settings, req.get("options")
                                                                  or {}))
    if reason is not None:
        return limits.Rejection("conversation_budget", reason, 0.0)
    return await fail_open("entrance", _redis_gate(req, settings, flags), None)


async def _redis_gate(req: Record, settings: Settings, flags: FlagView
                      ) -> limits.Rejection | None:
    redis = runtime.redis()
    rejection = await limits.check_entrance(TokenBuckets(redis), settings, flags,
                                            req["tenant_id"], req.get("user_id", "anonymous"))
    return rejection or await limits.check_tenant_budget(redis, settings, flags,
                                                        req["tenant_id"])


def _cut_reason(conv: Record, cmd: Record, flags: FlagView, settings: Settings) -> str | None:
    budget = budgets.conversation_budget(settings,
                                         conv["active"]["request"].get("options") or {})
    reason = budgets.exhausted(conv.get("flow_spent", {}), budget)
    if reason is not None:
        return reason
    tool = cmd.get("tool_call")
    if tool is None:
        return None
    if flags.tool_killed(tool["name"]):
        return f"tool {tool['name']} is switched off"
    if flags.degrade and _expensive(conv, cmd):
        return f"degrade: expensive tool {tool['name']} skipped"
    return None


def _expensive(conv: Record, cmd: Record) -> bool:
    """The agent's plan marks the step expensive."""
    agent = get_agent(conv["active"]["request"]["agent"])
    index = cmd["step_index"]
    return bool(agent and index < len(agent.plan) and agent.plan[index].expensive)


def _skipped_result(cmd: Record, reason: str) -> Record:
    now = int(time.time() * 1000)
    return {"step_id": cmd["step_id"], "step_index": cmd["step_index"],
            "step_type": cmd["step_type"], "attempt": cmd["attempt"],
            "request_id": cmd["request_id"], "conversation_id": cmd["conversation_id"],
            "trace_id": cmd["trace_id"], "status": "ok", "output": "", "error": None,
            "worker": FLOW_WORKER, "issued_at_ms": cmd["issued_at_ms"], "started_at_ms": now,
            "finished_at_ms": now, "cache_hit": False, "model": None, "backend": None,
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0,
                      "saved_tokens": 0, "saved_cost_usd": 0.0}}


def count_result(conv: Record | None, res: Record) -> None:
    """Add a worker's step result to the conversation's lifetime spend (budgets)."""
    pending = (conv or {}).get("active", {}) or {}
    pending = pending.get("pending") or {}
    if conv is None or res.get("worker") == FLOW_WORKER or (
            pending.get("step_id"), pending.get("attempt")) != (res["step_id"], res["attempt"]):
        return
    spent = conv.setdefault("flow_spent", {"steps": 0, "tokens": 0})
    spent["steps"] += 1
    spent["tokens"] += budgets.spent_tokens(res.get("usage") or {})


def _route_model(conv: Record, cmd: Record, out: Output, settings: Settings,
                 flags: FlagView) -> Output | str:
    agent = get_agent(cmd.get("agent") or conv["active"]["request"]["agent"])
    task_class = agent.task_class if agent else "chat"
    try:
        chosen = route(task_class, settings, flags)
    except NoPoolAvailable as exc:
        return str(exc)
    cmd["model_call"]["model"] = chosen.pool
    if chosen.degraded_reason:
        _note_degraded(conv, cmd["request_id"], chosen.degraded_reason)
    topic = inference_topic(cmd["lane"]).name if out.topic == INFERENCE_REQUESTS.name \
        else out.topic
    return Output(topic, out.key, out.schema, cmd)


def _note_degraded(conv: Record, request_id: str, reason: str) -> None:
    notes = conv.setdefault("flow_degraded", {}).setdefault(request_id, [])
    if reason not in notes:
        notes.append(reason)


def _fix_event(out: Output, cmd_pool: dict[str, str]) -> Output:
    """``step_issued`` events name the pool the step was routed to."""
    rec = out.record
    if rec.get("event_type") == "step_issued" and rec.get("step_id") in cmd_pool:
        rec["detail"] = {**rec["detail"], "name": cmd_pool[rec["step_id"]],
                         "pool": cmd_pool[rec["step_id"]]}
    return out


async def apply(decision: Decision, policy: Policy, settings: Settings) -> Decision:
    """Route, cut and mark the decision's outputs (see the module docstring)."""
    conv = decision.conversation
    if conv is None:
        return decision
    flags = runtime.flags()
    queue = list(decision.outputs)
    final: list[Output] = []
    pools: dict[str, str] = {}
    while queue:
        out = queue.pop(0)
        if out.schema == STEP_COMMAND and conv.get("active"):
            cmd = out.record
            reason = _cut_reason(conv, cmd, flags, settings)
            routed = None if reason else (
                _route_model(conv, cmd, out, settings, flags) if cmd.get("model_call")
                else out)
            if isinstance(routed, str):
                reason = routed
            if reason is not None:
                _note_degraded(conv, cmd["request_id"], reason)
                cut = on_result(conv, _skipped_result(cmd, reason), int(time.time() * 1000),
                                policy)
                conv = cut.conversation if cut.conversation is not None else conv
                queue = cut.outputs + queue
                continue
            assert routed is not None and not isinstance(routed, str)
            if cmd.get("model_call"):
                pools[cmd["step_id"]] = cmd["model_call"]["model"]
            final.append(routed)
            continue
        if out.schema == AGENT_ANSWER:
            await _finish_answer(conv, out.record)
        final.append(_fix_event(out, pools) if out.schema == AGENT_EVENT else out)
    return Decision(conv, final, decision.dedup)


async def _finish_answer(conv: Record, answer: Record) -> None:
    notes = conv.get("flow_degraded", {}).pop(answer["request_id"], None)
    if notes and answer["status"] in ("ok", "failed"):
        answer["status"] = "degraded"
        answer["reason"] = "; ".join(notes)
    if answer["status"] in ("ok", "degraded") and answer["text"]:
        await fail_open("recall_archive", recall.archive_exchange(
            runtime.redis(), answer["conversation_id"], {
                "request_id": answer["request_id"], "user": _question(conv, answer),
                "assistant": answer["text"]}), None)


def _question(conv: Record, answer: Record) -> str:
    for ex in reversed(conv.get("exchanges", [])):
        if ex.get("request_id") == answer["request_id"]:
            return str(ex["user"])
    return ""
