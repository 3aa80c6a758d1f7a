"""The coordinator's decisions as pure functions: (state, event, now) -> (state, outputs).

Kept free of Kafka and Faust so every rule can be unit-tested, and so that reprocessing a
redelivered event after a crash is provably harmless: a request already seen only re-issues
its pending step (workers tolerate repeats, mutating tools through the ledger), a result
for a step or attempt that is not pending is ignored, so one request yields one answer.

Time is an input like any event: the coordinator's sweep delivers "wake-ups", and
:func:`on_wakeup` re-issues steps whose retry is due, gives up attempts that outlived their
budget (3x the run-time limit) and answers requests past their deadline.

A request runs its agent's plan step by step. A mutating tool step is recorded as a draft
(the full command, in state and as an event) before it is issued; retries re-issue the
draft. When a request fails after completed mutating steps, their compensations run in
reverse order before the answer goes out (a saga).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from clawstream.processors.agents import AgentSpec, ModelStep, ToolStep, get_agent
from clawstream.processors.caching.control import control_for_request
from clawstream.processors.caching.report import merge_records
from clawstream.processors.keys import canonical_json
from clawstream.processors.policy import Policy, retry_delay_ms
from clawstream.processors.records import (
    Output,
    Record,
    answer,
    command_output,
    dead_letter,
    empty_usage,
    event,
    step_command,
    step_name,
)
from clawstream.processors.tools.catalog import get_tool_spec

__all__ = ["Decision", "Output", "build_messages", "next_due_ms", "on_request", "on_result",
           "on_wakeup"]


@dataclass
class Decision:
    conversation: Record | None
    outputs: list[Output] = field(default_factory=list)
    dedup: Record | None = None
    """The request's new dedup entry (on_request only); answers mark it answered."""


def empty_conversation() -> Record:
    return {"exchanges": [], "active": None, "waiting": []}


def build_messages(agent: AgentSpec, conv: Record, req: Record, notes: str | None
                   ) -> list[Record]:
    """System prompt, the last N exchanges, then the new question (with the tools' notes)."""
    messages = [{"role": "system", "content": agent.system_prompt}]
    for ex in conv["exchanges"][-agent.context_exchanges:]:
        messages.append({"role": "user", "content": ex["user"]})
        messages.append({"role": "assistant", "content": ex["assistant"]})
    question = req["text"]
    if notes:
        question = f"Notes:\n{notes}\n\nQuestion: {question}"
    messages.append({"role": "user", "content": question})
    return messages


# ---------------------------------------------------------------------------- issuing steps

def _plan_command(conv: Record, active: Record, agent: AgentSpec, now_ms: int,
                  policy: Policy) -> Record:
    req, index = active["request"], active["step_index"]
    step = agent.plan[index]
    cache = control_for_request(req["options"], agent.cache_ttl_s)
    if isinstance(step, ToolStep):
        spec = get_tool_spec(step.tool)
        tool = {"name": step.tool, "version": spec.version if spec else "?",
                "arguments_json": canonical_json(step.arguments(req)),
                "mutating": bool(spec and spec.mutating)}
        limit = policy.step_limit_ms(req["lane"], agent.step_timeout_s, spec)
        return step_command(req, active["run"], index, "tool", now_ms, limit, None, tool,
                            cache=cache)
    assert isinstance(step, ModelStep)
    call = {
        "model": "default",
        "prompt_version": agent.prompt_version,
        "messages": build_messages(agent, conv, req, active["notes"]),
        "max_tokens": agent.max_tokens,
        "temperature": agent.temperature,
    }
    limit = policy.step_limit_ms(req["lane"], agent.step_timeout_s, None)
    return step_command(req, active["run"], index, "model", now_ms, limit, call, None,
                        cache=cache)


def _issue(active: Record, cmd: Record, agent: AgentSpec, now_ms: int) -> list[Output]:
    active["pending"] = cmd
    active["retry_at_ms"] = None
    if cmd["attempt"] == 1:
        active["attempts"] = []
    req = active["request"]
    outputs = []
    if cmd["tool_call"] and cmd["tool_call"]["mutating"] and cmd["attempt"] == 1:
        outputs.append(event("draft_recorded", now_ms, req, step_id=cmd["step_id"],
                             agent_version=agent.version,
                             detail={"tool": step_name(cmd),
                                     "arguments": cmd["tool_call"]["arguments_json"]}))
    outputs.append(event("step_issued", now_ms, req, step_id=cmd["step_id"],
                         agent_version=agent.version,
                         detail={"step_type": cmd["step_type"], "name": step_name(cmd),
                                 "attempt": cmd["attempt"], "timeout_ms": cmd["timeout_ms"]}))
    outputs.append(command_output(cmd))
    return outputs


def _start(conv: Record, req: Record, run: int, now_ms: int, policy: Policy) -> list[Output]:
    agent = get_agent(req["agent"])
    if agent is None:
        return _reject_unknown_agent(req, now_ms)
    active = {"request": req, "run": run, "step_index": 0, "pending": None,
              "retry_at_ms": None, "attempts": [], "notes": None, "last_output": "",
              "timeline": [], "usage": empty_usage(), "effects": [], "failure": None}
    conv["active"] = active
    if now_ms >= req["deadline_ms"]:
        return _finish(conv, agent, "failed", "", "deadline passed before the request started",
                       now_ms, policy, [], reason_kind="deadline").outputs
    return _issue(active, _plan_command(conv, active, agent, now_ms, policy), agent, now_ms)


def _reject_unknown_agent(req: Record, now_ms: int) -> list[Output]:
    reason = f"unknown agent {req['agent']!r}"
    holder = {"request": req, "usage": empty_usage(), "timeline": []}
    return [answer(holder, "rejected", "", reason, now_ms, "none", reason_kind="unknown_agent"),
            event("request_rejected", now_ms, req, detail={"reason": reason})]


# ---------------------------------------------------------------------------- requests

def on_request(conv: Record | None, dedup: Record | None, req: Record, now_ms: int,
               policy: Policy) -> Decision:
    conv = conv or empty_conversation()
    active = conv["active"]
    redrive_of = req["options"].get("redrive_of")
    run = 0
    if dedup is not None:
        redriven = list(dedup.get("redriven", []))
        if not (redrive_of and dedup.get("answer_status") == "failed"
                and redrive_of not in redriven):
            return _duplicate(conv, dedup, req, now_ms)
        run = len(redriven) + 1
        dedup = {**dedup, "status": "in_progress", "redriven": [*redriven, redrive_of]}
        outputs = [event("request_redriven", now_ms, req,
                         detail={"dlq_id": redrive_of, "run": run})]
    else:
        dedup = {"request_id": req["request_id"], "status": "in_progress", "redriven": []}
        outputs = [event("request_received", now_ms, req)]
    if active is None:
        outputs += _start(conv, req, run, now_ms, policy)
    else:
        conv["waiting"].append({**req, "options": {**req["options"], "run": str(run)}})
    return Decision(conv, outputs, dedup)


def _duplicate(conv: Record, dedup: Record, req: Record, now_ms: int) -> Decision:
    outputs = [event("request_duplicate", now_ms, req,
                     detail={"first_request_id": dedup["request_id"]})]
    active = conv["active"]
    # A redelivery after a crash: re-issue the pending step, in case it never left. Not while
    # a retry waits for its time: the sweep issues that one.
    if (active and active["request"]["request_id"] == dedup["request_id"]
            and active["pending"] and active["retry_at_ms"] is None):
        outputs.append(command_output(active["pending"]))
    return Decision(conv, outputs, dedup)


# ---------------------------------------------------------------------------- results

def _timeline_entry(cmd: Record, res: Record, now_ms: int) -> Record:
    return {
        "step_id": res["step_id"],
        "step_type": res["step_type"],
        "name": step_name(cmd) if cmd["tool_call"] else (res.get("model") or "model"),
        "status": res["status"],
        "worker": res["worker"],
        "attempt": res["attempt"],
        "issued_at_ms": cmd["issued_at_ms"],
        "queue_wait_ms": float(res["started_at_ms"] - cmd["issued_at_ms"]),
        "run_ms": float(res["finished_at_ms"] - res["started_at_ms"]),
        "result_wait_ms": float(now_ms - res["finished_at_ms"]),
        "cache_hit": res["cache_hit"],
    }


def _is_pending(active: Record | None, res: Record) -> bool:
    pending = active["pending"] if active else None
    return bool(active and pending and active["retry_at_ms"] is None
                and (pending["step_id"], pending["attempt"]) == (res["step_id"], res["attempt"]))


def on_result(conv: Record | None, res: Record, now_ms: int, policy: Policy) -> Decision:
    active = conv["active"] if conv else None
    if conv is None or active is None or not _is_pending(active, res):
        req = active["request"] if active else res
        return Decision(conv, [event("step_ignored", now_ms,
                                     {**req, "request_id": res["request_id"]},
                                     step_id=res["step_id"], worker=res["worker"],
                                     detail={"reason": "not the pending step or attempt",
                                             "attempt": res["attempt"]})])
    agent = get_agent(active["request"]["agent"])
    assert agent is not None  # checked when the request started
    pending = active["pending"]
    active["timeline"].append(_timeline_entry(pending, res, now_ms))
    for k in ("prompt_tokens", "completion_tokens", "saved_tokens", "cost_usd",
              "saved_cost_usd"):
        active["usage"][k] += res["usage"][k]
    active["cache"] = merge_records(active.get("cache", []), res.get("cache") or [])
    outputs = [event("step_completed", now_ms, active["request"], step_id=res["step_id"],
                     worker=res["worker"], agent_version=agent.version,
                     detail={"status": res["status"], "attempt": res["attempt"]})]
    if res["status"] == "error":
        return _step_failed(conv, agent, res["error"] or {}, now_ms, policy, outputs)
    if active["failure"] is not None:
        outputs.append(event("compensation_completed", now_ms, active["request"],
                             step_id=res["step_id"], agent_version=agent.version,
                             detail={"tool": step_name(pending), "for_step":
                                     json.loads(pending["tool_call"]["arguments_json"])
                                     ["step_id"]}))
        return _compensate_next(conv, agent, now_ms, policy, outputs)
    _record_output(active, pending, res["output"])
    active["step_index"] += 1
    if active["step_index"] < len(agent.plan):
        cmd = _plan_command(conv, active, agent, now_ms, policy)
        return Decision(conv, outputs + _issue(active, cmd, agent, now_ms))
    return _finish(conv, agent, "ok", active["last_output"], None, now_ms, policy, outputs)


def _record_output(active: Record, cmd: Record, output: str) -> None:
    if cmd["step_type"] == "model":
        active["last_output"] = output.strip()
        return
    active["notes"] = _notes(output)
    active["last_output"] = output
    spec = get_tool_spec(step_name(cmd))
    if cmd["tool_call"]["mutating"] and spec is not None and spec.compensation:
        active["effects"].append({"step_id": cmd["step_id"], "compensation": spec.compensation,
                                  "arguments_json": cmd["tool_call"]["arguments_json"],
                                  "output": output})


def _notes(tool_output: str) -> str:
    try:
        hits = json.loads(tool_output)
        return "\n".join(f"- {h['text']}" for h in hits)
    except (ValueError, KeyError, TypeError):
        return tool_output


# ---------------------------------------------------------------------------- failures

def _step_failed(conv: Record, agent: AgentSpec, error: Record, now_ms: int, policy: Policy,
                 outputs: list[Output]) -> Decision:
    """Retry with backoff when the error allows it and attempts remain; else dead-letter the
    step and fail the request (compensating first), or go on compensating."""
    active = conv["active"]
    pending = active["pending"]
    req = active["request"]
    message = f"{error.get('error_class', 'Error')}: {error.get('message', 'unknown error')}"
    active["attempts"].append({"attempt": pending["attempt"], "at_ms": now_ms,
                               "error": message})
    spec = get_tool_spec(step_name(pending)) if pending["tool_call"] else None
    if error.get("retryable") and pending["attempt"] < policy.max_attempts(spec):
        delay, ceiling = retry_delay_ms(policy, pending["step_id"], pending["attempt"],
                                        error.get("retry_after_ms"))
        active["retry_at_ms"] = now_ms + delay
        outputs.append(event("retry_scheduled", now_ms, req, step_id=pending["step_id"],
                             agent_version=agent.version,
                             detail={"failed_attempt": pending["attempt"], "delay_ms": delay,
                                     "ceiling_ms": ceiling,
                                     "retry_after_ms": error.get("retry_after_ms") or 0,
                                     "error": message}))
        return Decision(conv, outputs)
    full_error = {"error_class": error.get("error_class", "Error"),
                  "message": error.get("message", "unknown error")}
    letter = dead_letter(active, pending, full_error, now_ms)
    outputs.append(letter)
    outputs.append(event("dead_lettered", now_ms, req, step_id=pending["step_id"],
                         agent_version=agent.version,
                         detail={"dlq_id": letter.record["dlq_id"], "error": message}))
    active["pending"] = None
    if active["failure"] is not None:  # a compensation gave up: go on with the others
        return _compensate_next(conv, agent, now_ms, policy, outputs)
    reason = (f"the {step_name(pending)} step failed after {pending['attempt']} attempt(s) "
              f"({message}); dead letter {letter.record['dlq_id']}")
    return _fail(conv, agent, reason, now_ms, policy, outputs)


def _fail(conv: Record, agent: AgentSpec, reason: str, now_ms: int, policy: Policy,
          outputs: list[Output], reason_kind: str | None = None) -> Decision:
    active = conv["active"]
    active["pending"] = None
    active["retry_at_ms"] = None
    if not active["effects"]:
        return _finish(conv, agent, "failed", "", reason, now_ms, policy, outputs,
                       reason_kind=reason_kind)
    active["failure"] = {"status": "failed", "reason": reason, "reason_kind": reason_kind}
    outputs.append(event("saga_compensating", now_ms, active["request"],
                         agent_version=agent.version,
                         detail={"steps": len(active["effects"]), "reason": reason}))
    return _compensate_next(conv, agent, now_ms, policy, outputs)


def _compensate_next(conv: Record, agent: AgentSpec, now_ms: int, policy: Policy,
                     outputs: list[Output]) -> Decision:
    """Undo completed mutating steps, last first; then answer with the failure."""
    active = conv["active"]
    if not active["effects"]:
        failure = active["failure"]
        return _finish(conv, agent, failure["status"], "", failure["reason"], now_ms, policy,
                       outputs, reason_kind=failure.get("reason_kind"))
    effect = active["effects"].pop()
    req = active["request"]
    spec = get_tool_spec(effect["compensation"])
    arguments = {"step_id": effect["step_id"],
                 "arguments": json.loads(effect["arguments_json"]), "output": effect["output"]}
    tool = {"name": effect["compensation"], "version": spec.version if spec else "?",
            "arguments_json": canonical_json(arguments), "mutating": True}
    limit = policy.step_limit_ms(req["lane"], agent.step_timeout_s, spec)
    cmd = step_command(req, active["run"], active["step_index"], "tool", now_ms, limit, None,
                       tool, key_input={"compensate": effect["step_id"]})
    return Decision(conv, outputs + _issue(active, cmd, agent, now_ms))


def _finish(conv: Record, agent: AgentSpec, status: str, text: str, reason: str | None,
            now_ms: int, policy: Policy, outputs: list[Output],
            reason_kind: str | None = None) -> Decision:
    active = conv["active"]
    req = active["request"]
    outputs.append(answer(active, status, text, reason, now_ms, agent.version,
                          reason_kind=reason_kind))
    outputs.append(event("answer_emitted", now_ms, req, agent_version=agent.version,
                         detail={"status": status, "reason": reason or ""}))
    if status == "ok":
        conv["exchanges"].append({"request_id": req["request_id"], "user": req["text"],
                                  "assistant": text})
    conv["active"] = None
    while conv["waiting"] and conv["active"] is None:
        nxt = conv["waiting"].pop(0)
        run = int(nxt["options"].pop("run", "0"))
        outputs += _start(conv, nxt, run, now_ms, policy)
    return Decision(conv, outputs)


# ---------------------------------------------------------------------------- time

def next_due_ms(conv: Record | None, policy: Policy) -> int | None:
    """When this conversation next needs a wake-up, or None if it is idle."""
    if conv is None:
        return None
    due = [w["deadline_ms"] for w in conv["waiting"]]
    active = conv["active"]
    if active is not None:
        if active["failure"] is None:
            due.append(active["request"]["deadline_ms"])
        pending = active["pending"]
        if active["retry_at_ms"] is not None:
            due.append(active["retry_at_ms"])
        elif pending is not None:
            due.append(pending["issued_at_ms"] + policy.budget_ms(pending["timeout_ms"]))
    return min(due) if due else None


def on_wakeup(conv: Record | None, now_ms: int, policy: Policy) -> Decision:
    """Expired waiting requests are answered; then the active request's deadline, due retry
    or outlived attempt is handled. A wake-up with nothing due changes nothing."""
    if conv is None:
        return Decision(None)
    outputs: list[Output] = []
    for req in [w for w in conv["waiting"] if now_ms >= w["deadline_ms"]]:
        conv["waiting"].remove(req)
        holder = {"request": req, "usage": empty_usage(), "timeline": []}
        outputs.append(answer(holder, "failed", "", "deadline passed while queued behind an "
                              "earlier request of the conversation", now_ms, "none",
                              reason_kind="deadline"))
    active = conv["active"]
    if active is None:
        return Decision(conv, outputs)
    agent = get_agent(active["request"]["agent"])
    assert agent is not None
    req, pending = active["request"], active["pending"]
    if active["failure"] is None and now_ms >= req["deadline_ms"]:
        outputs.append(event("deadline_exceeded", now_ms, req, agent_version=agent.version,
                             step_id=pending["step_id"] if pending else None))
        return _fail(conv, agent, "deadline exceeded: the request was not answered in time",
                     now_ms, policy, outputs, reason_kind="deadline")
    if pending is None:
        return Decision(conv, outputs)
    if active["retry_at_ms"] is not None:
        if now_ms < active["retry_at_ms"]:
            return Decision(conv, outputs)
        retry = {**pending, "attempt": pending["attempt"] + 1, "issued_at_ms": now_ms}
        return Decision(conv, outputs + _issue(active, retry, agent, now_ms))
    budget = policy.budget_ms(pending["timeout_ms"])
    if now_ms < pending["issued_at_ms"] + budget:
        return Decision(conv, outputs)
    outputs.append(event("step_timed_out", now_ms, req, step_id=pending["step_id"],
                         agent_version=agent.version,
                         detail={"attempt": pending["attempt"], "budget_ms": budget}))
    error = {"error_class": "StepTimeout", "retryable": True,
             "message": f"no result within {budget} ms ({policy.budget_factor:g}x the "
                        "step's run-time limit)"}
    return _step_failed(conv, agent, error, now_ms, policy, outputs)
