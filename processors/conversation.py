"""The coordinator's decisions as pure functions: (state, event, now) -> (state, outputs).

Kept free of Kafka and Faust so every rule can be unit-tested, and so that reprocessing a
redelivered event after a crash is provably harmless: a request read again re-issues only
its steps in flight (workers tolerate repeats, mutating tools through the ledger), a
result for a step or attempt that is not in flight is ignored, so one request yields one
answer.

Time is an input like any event: the coordinator's sweep delivers "wake-ups", and
:func:`on_wakeup` re-issues steps whose retry is due, gives up attempts that outlived their
budget (3x the run-time limit) and answers requests past their deadline.

A request runs in turns (:mod:`clawstream.processors.turns` builds them): a fixed plan's
next step, or, for an agent whose model decides, a model call and then the tool calls it
chose, run in parallel as steps of their own and joined here when all are back, until a
final answer or a limit (``max_steps``, the token budget, the deadline: the answer is then
``degraded``, with what the agent has so far). Every choice of the model is a ``decision``
event. A mutating tool step is recorded as a draft (the full command, in state and as an
event) before it is issued; retries re-issue the draft. When a request fails after
completed mutating steps, their compensations run in reverse order before the answer goes
out (a saga).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from clawstream.processors import admission, delegation
from clawstream.processors.agents import AgentSpec, FanOut
from clawstream.processors.caching.report import merge_records
from clawstream.processors.canary.routing import route_request
from clawstream.processors.keys import canonical_json
from clawstream.processors.policy import Policy, retry_delay_ms
from clawstream.processors.records import (
    Output,
    Subject,
    about,
    answer,
    command_output,
    dead_letter,
    event,
    plan_letter,
    step_command,
    step_name,
    usage_sum,
)
from clawstream.processors.state import (
    ActiveRequest,
    Conversation,
    DedupEntry,
    Exchange,
    Failure,
    StepRun,
    empty_conversation,
)
from clawstream.processors.tools.base import INVALID_ARGUMENTS
from clawstream.processors.turns import (
    PlanError,
    Rules,
    active_agent,
    context,
    context_kept,
    deciding,
    model_turn,
    new_run,
    plan_step,
    so_far,
    tool_results,
)
from clawstream.processors.validation import Rejection
from clawstream.schemas.records import (
    AgentRequest,
    AnswerStatus,
    FunctionCall,
    ReasonKind,
    StepCommand,
    StepError,
    StepResult,
    TimelineEntry,
    ToolCall,
    empty_usage,
    message,
)
from clawstream.schemas.records import Cancel as CancelRecord

__all__ = ["Decision", "Output", "Rules", "abort", "fresh_dedup", "hard_abort", "holds",
           "keep_within", "needs_gate", "next_due_ms", "on_cancel", "on_request", "on_result",
           "on_wakeup", "refuse_unprocessable", "reject"]

MAX_EARLY_CANCELS = 32
"""Cancels kept for requests that have not arrived yet (per conversation)."""

fresh_dedup = admission.fresh_dedup


@dataclass
class Decision:
    conversation: Conversation | None
    outputs: list[Output] = field(default_factory=list)
    dedup: DedupEntry | None = None
    """The request's new dedup entry (on_request only); answers mark it answered."""
    archive: list[tuple[str, Exchange]] = field(default_factory=list)
    """Answered exchanges, whole, for the recall archive (conversation id, exchange)."""


def needs_gate(dedup: DedupEntry | None, req: AgentRequest, rules: Rules) -> bool:
    """Whether the entrance limits must be asked about ``req`` (a new, valid request)."""
    return admission.needs_gate(dedup, req, rules.policy)


def _agent(rules: Rules, active: ActiveRequest) -> AgentSpec:
    agent = active_agent(rules.catalog, active)
    assert agent is not None  # checked when the request started
    return agent


# ---------------------------------------------------------------------------- requests

def on_request(conv: Conversation | None, dedup: DedupEntry | None, req: AgentRequest,
               now_ms: int, rules: Rules, source: str = "",
               rejection: Rejection | None = None) -> Decision:
    """``dedup``: :func:`fresh_dedup` of the table's entry; ``source``: where the request
    was read (a redelivery comes from the same place); ``rejection``: the entrance limits'
    answer for a request :func:`needs_gate` said to ask about."""
    if dedup is None and conv is not None and holds(conv, req["request_id"]):
        # The conversation's state was stored and the dedup entry's write was lost (a
        # crash between the two): this is a redelivery, never a second run of the request.
        dedup = _entry(req, "")
    if dedup is not None:
        return _known_key(conv or empty_conversation(), dedup, req, now_ms, rules, source)
    refused = admission.refusal(req, rules.policy, rejection)
    if refused is not None:
        return reject(conv, req, refused, now_ms)
    conv = conv or empty_conversation()
    dedup = _entry(req, source)
    return _admit(conv, dedup, req, 0,
                  [event("request_received", now_ms, about(req))], now_ms, rules)


def _entry(req: AgentRequest, source: str) -> DedupEntry:
    """A running request's dedup entry. ``source`` "" when not known to be where the
    request was first read."""
    return {"request_id": req["request_id"], "status": "in_progress", "redriven": [],
            "content": admission.request_content(req), "source": source}


def holds(conv: Conversation | None, request_id: str) -> bool:
    """Whether the conversation's state has the request, running or queued."""
    if conv is None:
        return False
    active = conv["active"]
    return ((active is not None and active["request"]["request_id"] == request_id)
            or any(w["request_id"] == request_id for w in conv["waiting"]))


def reject(conv: Conversation | None, req: AgentRequest, rejection: Rejection, now_ms: int
           ) -> Decision:
    """Answer ``req`` ``rejected`` with the reason; the conversation is left as it was."""
    return Decision(conv, admission.rejection_outputs(req, rejection, now_ms),
                    admission.rejected_entry(req))


def _known_key(conv: Conversation, dedup: DedupEntry, req: AgentRequest, now_ms: int,
               rules: Rules, source: str) -> Decision:
    """A request whose idempotency key was seen: a redrive, a duplicate, or a conflict."""
    if req["request_id"] in dedup.get("conflicts", []):  # a refused conflict, read again
        return Decision(conv, [event("request_duplicate", now_ms, about(req),
                                     detail={"first_request_id": req["request_id"]})], dedup)
    clash = admission.conflict(dedup, req)
    if clash is not None:
        return Decision(conv, admission.rejection_outputs(req, clash, now_ms),
                        admission.with_conflict(dedup, req))
    redrive_of = req["options"].get("redrive_of")
    redriven = list(dedup.get("redriven", []))
    if (dedup["status"] == "in_progress" and dedup["request_id"] == req["request_id"]
            and not holds(conv, req["request_id"])):
        return _resume(conv, dedup, req, len(redriven), now_ms, rules, source)
    if not (redrive_of and dedup.get("answer_status") == "failed"
            and redrive_of not in redriven):
        return _duplicate(conv, dedup, req, now_ms, source)
    run = len(redriven) + 1
    dedup = {**dedup, "status": "in_progress", "redriven": [*redriven, redrive_of],
             "source": source}
    return _admit(conv, dedup, req, run, [event("request_redriven", now_ms, about(req),
                                                detail={"dlq_id": redrive_of, "run": run})],
                  now_ms, rules)


def _resume(conv: Conversation, dedup: DedupEntry, req: AgentRequest, run: int,
            now_ms: int, rules: Rules, source: str) -> Decision:
    """A running request read again that the conversation's state no longer has: its
    dedup entry was stored and the conversation's write was lost (two tables, written
    apart; a crash between them, or before the conversation's changelog record left).
    Start it again from its first step: the steps have the same ids, so results of the lost
    run still match or are ignored, and mutating tools run once through the ledger."""
    outputs = [event("request_resumed", now_ms, about(req),
                     detail={"reason": "the conversation's state had lost the request",
                             "run": run})]
    dedup = {**dedup, "source": source}
    return _admit(conv, dedup, req, run, outputs, now_ms, rules)


def _admit(conv: Conversation, dedup: DedupEntry, req: AgentRequest, run: int,
           outputs: list[Output], now_ms: int, rules: Rules) -> Decision:
    """Start the request now, or queue it behind the conversation's running one."""
    if conv["active"] is None:
        started = _start(conv, req, run, now_ms, rules)
        return Decision(conv, outputs + started.outputs, dedup, started.archive)
    conv["waiting"].append({**req, "options": {**req["options"], "run": str(run)}})
    return Decision(conv, outputs, dedup)


def _duplicate(conv: Conversation, dedup: DedupEntry, req: AgentRequest, now_ms: int,
               source: str) -> Decision:
    outputs = [event("request_duplicate", now_ms, about(req),
                     detail={"first_request_id": dedup["request_id"]})]
    active = conv["active"]
    # The very record read again (a crash before its offset was committed): re-issue the
    # steps in flight, in case the crash came before they left. Never for another record
    # under the same key (a client's duplicate), and not while a retry waits for its time
    # (the sweep issues that one): each would run a step once more.
    if (source and dedup.get("source") == source and active
            and active["request"]["request_id"] == dedup["request_id"]):
        outputs += [_reissue(run) for run in active["steps"]
                    if run["output"] is None and run["retry_at_ms"] is None]
    return Decision(conv, outputs, dedup)


def _reissue(run: StepRun) -> Output:
    """A step in flight, sent again exactly as it was (a child request too: its
    coordinator sees a duplicate, never a second child)."""
    request = run["child"]["request"] if delegation.is_delegation(run) else None
    return delegation.request_output(request) if request else command_output(run["cmd"])


# ---------------------------------------------------------------------------- turns

def _start(conv: Conversation, req: AgentRequest, run: int, now_ms: int, rules: Rules
           ) -> Decision:
    routed = route_request(conv, req, now_ms, rules)  # which version of the agent
    agent = routed.agent
    if agent is None:
        return Decision(conv, _reject_unknown_agent(req, now_ms, routed.problem))
    active: ActiveRequest = {
        "request": req, "run": run, "step_index": 0, "steps": [],
        "transcript": context(agent, conv, req, rules.policy) if deciding(agent) else [],
        "taken": 0, "notes": None, "last_output": "", "timeline": [], "usage": empty_usage(),
        "effects": [], "failure": None, "agent_version": agent.version,
        "started_at_ms": now_ms}
    conv["active"] = active
    if now_ms >= req["deadline_ms"]:
        return _finish(conv, active, agent, "failed", "",
                       "deadline passed before the request started", now_ms, rules,
                       routed.outputs, reason_kind="deadline")
    early = conv.get("cancelled", {}).pop(req["request_id"], None)
    if early is not None:
        return _finish(conv, active, agent, "failed", "", f"cancelled: {early}", now_ms,
                       rules, [*routed.outputs,
                               event("request_cancelled", now_ms, about(req),
                                     agent_version=agent.version,
                                     detail={"reason": early, "before_start": "true"})])
    return _next_turn(conv, active, agent, now_ms, rules, routed.outputs)


def _reject_unknown_agent(req: AgentRequest, now_ms: int, reason: str) -> list[Output]:
    return [answer(req, "rejected", "", reason, now_ms, "none", reason_kind="unknown_agent"),
            event("request_rejected", now_ms, about(req), detail={"reason": reason})]


def _next_turn(conv: Conversation, active: ActiveRequest, agent: AgentSpec, now_ms: int,
               rules: Rules, outputs: list[Output]) -> Decision:
    """A deciding agent's next model call; a plan's next step, or its answer."""
    if not deciding(agent):
        assert agent.plan is not None
        if active["step_index"] >= len(agent.plan):
            return _finish(conv, active, agent, "ok", active["last_output"], None, now_ms,
                           rules, outputs)
    limit = _limit_reached(active, agent, 1)
    if limit is not None:
        return _stop_at_limit(conv, active, agent, limit, now_ms, rules, outputs)
    if deciding(agent):
        cmd = model_turn(active, agent, now_ms, rules)
        active["step_index"] += 1
        return _issue_turn(conv, active, agent, [new_run(cmd)], now_ms, rules, outputs)
    assert agent.plan is not None
    step = agent.plan[active["step_index"]]
    if isinstance(step, FanOut):
        fanned = delegation.fan_out_turn(active, agent, step, now_ms, rules)
        if isinstance(fanned, PlanError):
            return _plan_failed(conv, active, agent, fanned, now_ms, rules, outputs)
        limit = _limit_reached(active, agent, len(fanned))
        if limit is not None:
            return _stop_at_limit(conv, active, agent, limit, now_ms, rules, outputs)
        return _issue_turn(conv, active, agent, fanned, now_ms, rules, outputs)
    planned = plan_step(conv, active, agent, now_ms, rules)
    if isinstance(planned, PlanError):
        return _plan_failed(conv, active, agent, planned, now_ms, rules, outputs)
    return _issue_turn(conv, active, agent, [new_run(planned)], now_ms, rules, outputs)


def _plan_failed(conv: Conversation, active: ActiveRequest, agent: AgentSpec,
                 planned: PlanError, now_ms: int, rules: Rules, outputs: list[Output]
                 ) -> Decision:
    """The plan could not build its step: fail the request, dead-lettered so it can be
    redriven once the agent is fixed."""
    req = active["request"]
    step_id = f"plan:{req['conversation_id']}:{req['request_id']}:{active['step_index']}"
    letter = plan_letter(req, step_id, planned.step, planned.error_class, planned.message,
                         now_ms)
    dlq_id = letter.record["dlq_id"]  # type: ignore[typeddict-item]
    message_ = f"{planned.error_class}: {planned.message}"
    outputs += [letter, event("dead_lettered", now_ms, about(req), step_id=step_id,
                              agent_version=agent.version,
                              detail={"dlq_id": dlq_id, "error": message_})]
    reason = (f"the agent could not plan its {planned.step} step for this request "
              f"({message_}); dead letter {dlq_id}")
    return _fail(conv, active, agent, reason, now_ms, rules, outputs)


def _issue_turn(conv: Conversation, active: ActiveRequest, agent: AgentSpec,
                runs: list[StepRun], now_ms: int, rules: Rules, outputs: list[Output]
                ) -> Decision:
    active["steps"] = runs
    for run in runs:
        if run["output"] is None:  # not answered at once (a call the runtime refused)
            active["taken"] += 1
            outputs += _issue(active, run, agent, now_ms, rules)
    return Decision(conv, outputs)


def _issue(active: ActiveRequest, run: StepRun, agent: AgentSpec, now_ms: int, rules: Rules
           ) -> list[Output]:
    run["retry_at_ms"] = None
    if delegation.is_delegation(run):
        return delegation.issue(active, run, agent, now_ms, rules.policy)
    cmd = run["cmd"]
    subject = about(active["request"])
    outputs = []
    tool = cmd["tool_call"]
    if tool and tool["mutating"] and cmd["attempt"] == 1:
        outputs.append(event("draft_recorded", now_ms, subject, step_id=cmd["step_id"],
                             agent_version=agent.version,
                             detail={"tool": step_name(cmd),
                                     "arguments": tool["arguments_json"]}))
    outputs.append(event("step_issued", now_ms, subject, step_id=cmd["step_id"],
                         agent_version=agent.version,
                         detail={"step_type": cmd["step_type"], "name": step_name(cmd),
                                 "attempt": cmd["attempt"], "timeout_ms": cmd["timeout_ms"],
                                 "call_id": (tool["call_id"] if tool else None) or ""}))
    outputs.append(command_output(cmd))
    return outputs


def _turn_done(conv: Conversation, active: ActiveRequest, agent: AgentSpec, now_ms: int,
               rules: Rules, outputs: list[Output]) -> Decision:
    """Every step of the turn is back: go on from what they returned."""
    runs = active["steps"]
    if not deciding(agent):
        if delegation.is_delegation(runs[0]):
            active["notes"], active["last_output"] = delegation.fan_in(runs)
        else:
            _record_output(active, runs[0])
        active["step_index"] += 1
        return _next_turn(conv, active, agent, now_ms, rules, outputs)
    first = runs[0]
    if first["cmd"]["step_type"] != "model":  # tools' and sub-agents' results, to the model
        active["transcript"] += tool_results(runs)
        return _next_turn(conv, active, agent, now_ms, rules, outputs)
    text, calls = (first["output"] or "").strip(), first["tool_calls"]
    outputs.append(_decision(active, agent, first, now_ms))
    if agent.passthrough or not calls:
        return _finish(conv, active, agent, "ok", text, None, now_ms, rules, outputs,
                       tool_calls=calls if agent.passthrough else [])
    if _repeats_last_calls(active, calls):
        return _stop_at_limit(conv, active, agent, "the model asked for the same tool calls "
                              "again (a loop): answering with what it has", now_ms, rules,
                              outputs)
    active["transcript"].append(message("assistant", text, tool_calls=calls))
    limit = _limit_reached(active, agent, len(calls))
    if limit is not None:
        return _stop_at_limit(conv, active, agent, limit, now_ms, rules, outputs)
    runs = delegation.call_turn(active, agent, calls, now_ms, rules)
    active["step_index"] += len(runs)
    decision = _issue_turn(conv, active, agent, runs, now_ms, rules, outputs)
    if all(run["output"] is not None for run in runs):  # every call refused at once
        return _turn_done(conv, active, agent, now_ms, rules, decision.outputs)
    return decision


def _repeats_last_calls(active: ActiveRequest, calls: list[FunctionCall]) -> bool:
    """The model asks for exactly the calls (tools and arguments) whose results it was just
    given: with greedy decoding it would ask again forever."""
    last = next((m for m in reversed(active["transcript"]) if m["role"] == "assistant"), None)

    def shape(items: list[FunctionCall]) -> list[tuple[str, str]]:
        return [(c["name"], canonical_json(_parsed(c["arguments_json"]))) for c in items]

    return last is not None and bool(last["tool_calls"]) and shape(last["tool_calls"]) == \
        shape(calls)


def _parsed(arguments_json: str) -> object:
    try:
        return json.loads(arguments_json)
    except ValueError:
        return arguments_json


def _decision(active: ActiveRequest, agent: AgentSpec, run: StepRun, now_ms: int) -> Output:
    """The model's choice, for the audit log: final text, or which tools with what."""
    calls = run["tool_calls"]
    last = active["timeline"][-1] if active["timeline"] else None
    return event("decision", now_ms, about(active["request"]), step_id=run["cmd"]["step_id"],
                 agent_version=agent.version,
                 detail={"kind": "tool_calls" if calls else "final",
                         "tools": ",".join(c["name"] for c in calls),
                         "calls": canonical_json([{"id": c["id"], "name": c["name"],
                                                   "arguments": c["arguments_json"]}
                                                  for c in calls])[:4000],
                         "model": last["name"] if last else "",
                         "turn": sum(m["role"] == "assistant" for m in active["transcript"])
                         + 1})


def _limit_reached(active: ActiveRequest, agent: AgentSpec, more_steps: int) -> str | None:
    """Why the request may not take ``more_steps`` more steps (its agent's limits), or
    None. The conversation's own budgets are flow control's (``processors/flow``)."""
    if agent.max_steps is not None and active["taken"] + more_steps > agent.max_steps:
        return (f"the agent reached its limit of {agent.max_steps} steps "
                f"({active['taken']} taken, {more_steps} more asked for)")
    usage = active["usage"]
    spent = usage["prompt_tokens"] + usage["completion_tokens"]
    tokens = delegation.token_limit(active["request"], agent)
    if tokens is not None and spent >= tokens:
        return f"the agent used its token budget ({spent} of {tokens} tokens)"
    cost = delegation.cost_limit(active["request"], agent)
    if cost is not None and usage["cost_usd"] >= cost:
        return (f"the agent used its cost budget (${usage['cost_usd']:.6f} of "
                f"${cost:.6f})")
    return None


def _stop_at_limit(conv: Conversation, active: ActiveRequest, agent: AgentSpec, reason: str,
                   now_ms: int, rules: Rules, outputs: list[Output],
                   reason_kind: ReasonKind | None = None) -> Decision:
    """Past a limit: answer ``degraded`` with the reason and what the agent has so far."""
    outputs += _drop_steps(active, reason, now_ms)
    text = so_far(active) if deciding(agent) else active["last_output"]
    return _finish(conv, active, agent, "degraded", text, reason, now_ms, rules, outputs,
                   reason_kind=reason_kind)


# ---------------------------------------------------------------------------- results

def _timeline_entry(cmd: StepCommand, res: StepResult, now_ms: int) -> TimelineEntry:
    return {
        "step_id": res["step_id"],
        "step_type": res["step_type"],
        "name": step_name(cmd) if cmd["tool_call"] else (res["model"] or "model"),
        "status": res["status"],
        "worker": res["worker"],
        "attempt": res["attempt"],
        "issued_at_ms": cmd["issued_at_ms"],
        "queue_wait_ms": float(res["started_at_ms"] - cmd["issued_at_ms"]),
        "run_ms": float(res["finished_at_ms"] - res["started_at_ms"]),
        "result_wait_ms": float(now_ms - res["finished_at_ms"]),
        "cache_hit": res["cache_hit"],
        "usage": res["usage"],
        "request_id": None,
        "conversation_id": None,
        "agent_status": None,
        "depth": 0,
    }


def _run_for(active: ActiveRequest | None, res: StepResult) -> StepRun | None:
    """The step in flight that ``res`` answers (the same step and attempt), if any."""
    for run in active["steps"] if active else []:
        cmd = run["cmd"]
        if (run["output"] is None and run["retry_at_ms"] is None
                and (cmd["step_id"], cmd["attempt"]) == (res["step_id"], res["attempt"])):
            return run
    return None


def on_result(conv: Conversation | None, res: StepResult, now_ms: int, rules: Rules
              ) -> Decision:
    active = conv["active"] if conv else None
    run = _run_for(active, res)
    if conv is None or active is None or run is None:
        return _ignored(conv, active, res, now_ms)
    agent = _agent(rules, active)
    cmd = run["cmd"]
    active["timeline"] += delegation.timeline_entries(_timeline_entry(cmd, res, now_ms), res)
    active["usage"] = usage_sum(active["usage"], res["usage"])
    active["cache"] = merge_records(active.get("cache", []), res["cache"] or [])
    outputs = [event("step_completed", now_ms, about(active["request"]),
                     step_id=res["step_id"], worker=res["worker"],
                     agent_version=agent.version,
                     detail={"status": res["status"], "attempt": res["attempt"],
                             **_spend(res)})]
    if res["status"] == "error":
        error = res["error"] or {"error_class": "Error", "message": "unknown error",
                                 "retryable": False, "retry_after_ms": None,
                                 "infrastructure": False}
        if active.get("cancelled") and active["failure"] is None:
            run["output"] = f"error: {error['message']}"  # no retry: it is being cancelled
        elif not (deciding(agent) and active["failure"] is None
                  and error["error_class"] == INVALID_ARGUMENTS):
            return _step_failed(conv, active, run, agent, error, now_ms, rules, outputs)
        else:
            run["output"] = f"error: {error['message']}"  # the model reads it and corrects
    else:
        run["output"] = res["output"]
        run["tool_calls"] = res["tool_calls"]
        _record_effect(active, cmd, res["output"], rules)
        if delegation.is_delegation(run):
            delegation.joined(active, run, res)
    if active["failure"] is not None:
        tool = cmd["tool_call"]
        assert tool is not None  # only compensations run while failing
        outputs.append(event("compensation_completed", now_ms, about(active["request"]),
                             step_id=res["step_id"], agent_version=agent.version,
                             detail={"tool": step_name(cmd), "for_step":
                                     json.loads(tool["arguments_json"])["step_id"]}))
        return _compensate_next(conv, active, agent, now_ms, rules, outputs)
    return _step_done(conv, active, agent, now_ms, rules, outputs)


def _step_done(conv: Conversation, active: ActiveRequest, agent: AgentSpec, now_ms: int,
               rules: Rules, outputs: list[Output]) -> Decision:
    """A step of the turn is back (or given up): wait for the others, or stop here (a
    cancel, a quorum met or lost), or go on with the next turn."""
    cancelled = active.get("cancelled")
    if cancelled:
        outputs += delegation.cancel_running(active, f"the parent was cancelled: {cancelled}",
                                             now_ms)
        if any(r["output"] is None for r in active["steps"]):
            return Decision(conv, outputs)  # between steps: those in flight finish
        return _fail(conv, active, agent, f"cancelled: {cancelled}", now_ms, rules, outputs)
    lost = delegation.quorum_lost(active)
    if lost is not None:
        return _fail(conv, active, agent, lost, now_ms, rules, outputs)
    if delegation.quorum_met(active):
        outputs += delegation.cancel_running(active, "the fan-out's quorum was met", now_ms)
    if any(r["output"] is None for r in active["steps"]):
        return Decision(conv, outputs)  # other calls of the turn still run
    return _turn_done(conv, active, agent, now_ms, rules, outputs)


def _spend(res: StepResult) -> dict[str, object]:
    """A step result's usage, for its audit event: the event log keeps what each step cost
    after the commands and results topics have expired."""
    usage = res["usage"]
    return {"prompt_tokens": usage["prompt_tokens"],
            "completion_tokens": usage["completion_tokens"],
            "cost_usd": f"{usage['cost_usd']:.8f}", "saved_tokens": usage["saved_tokens"],
            "saved_cost_usd": f"{usage['saved_cost_usd']:.8f}",
            "cache_hit": str(res["cache_hit"]).lower(), "model": res["model"] or ""}


def _ignored(conv: Conversation | None, active: ActiveRequest | None, res: StepResult,
             now_ms: int) -> Decision:
    """A result for a step or attempt that is not in flight (a late attempt, a repeat). Its
    work was done and paid for all the same: counted in the running request's usage when
    it is that request's, and on the event either way (``clawstream cost`` adds those)."""
    mine = active is not None and active["request"]["request_id"] == res["request_id"]
    if mine and active is not None:
        active["usage"] = usage_sum(active["usage"], res["usage"])
        delegation.late_result(active, res)
    subject: Subject = {"conversation_id": res["conversation_id"],
                        "request_id": res["request_id"], "trace_id": res["trace_id"],
                        "agent": active["request"]["agent"] if active else None}
    return Decision(conv, [event("step_ignored", now_ms, subject, step_id=res["step_id"],
                                 worker=res["worker"],
                                 detail={"reason": "not a step or attempt in flight",
                                         "attempt": res["attempt"],
                                         "counted_in_answer": str(mine).lower(),
                                         **_spend(res)})])


def _record_output(active: ActiveRequest, run: StepRun) -> None:
    """A plan step's output: a model's is the answer so far, a tool's the notes of the next
    model step."""
    output = run["output"] or ""
    if run["cmd"]["tool_call"] is None:
        active["last_output"] = output.strip()
        return
    active["notes"] = _notes(output)
    active["last_output"] = output


def _record_effect(active: ActiveRequest, cmd: StepCommand, output: str, rules: Rules
                   ) -> None:
    """A completed mutating step whose tool declares a compensation joins the saga."""
    tool = cmd["tool_call"]
    if tool is None or not tool["mutating"] or active["failure"] is not None:
        return
    spec = rules.catalog.tool_spec(tool["name"])
    if spec is not None and spec.compensation:
        active["effects"].append({"step_id": cmd["step_id"], "compensation": spec.compensation,
                                  "arguments_json": tool["arguments_json"],
                                  "output": output})


def _notes(tool_output: str) -> str:
    try:
        hits = json.loads(tool_output)
        return "\n".join(f"- {h['text']}" for h in hits)
    except (ValueError, KeyError, TypeError):
        return tool_output


# ---------------------------------------------------------------------------- failures

def _step_failed(conv: Conversation, active: ActiveRequest, run: StepRun, agent: AgentSpec,
                 error: StepError, now_ms: int, rules: Rules, outputs: list[Output]
                 ) -> Decision:
    """Retry with backoff when the error allows it and attempts remain; else dead-letter the
    step and fail the request (compensating first), or go on compensating.

    A failure of our own infrastructure (Redis, Kafka or Serve away, a step still being
    applied by another execution) is the step's bad luck, not its fault: it is retried with
    the same backoff until the request's deadline, and uses none of the step's attempts."""
    cmd = run["cmd"]
    req = active["request"]
    message_ = f"{error['error_class']}: {error['message']}"
    infrastructure = bool(error.get("infrastructure"))
    run["attempts"].append({"attempt": cmd["attempt"], "at_ms": now_ms, "error": message_,
                            "infrastructure": infrastructure})
    tool = cmd["tool_call"]
    child = run.get("child")
    spec = rules.catalog.tool_spec(tool["name"]) if tool and child is None else None
    attempts = child["max_attempts"] if child else rules.policy.max_attempts(spec)
    failures = sum(not a.get("infrastructure") for a in run["attempts"])
    if infrastructure or (error["retryable"] and failures < attempts):
        delay, ceiling = retry_delay_ms(rules.policy, cmd["step_id"], cmd["attempt"],
                                        error["retry_after_ms"])
        run["retry_at_ms"] = now_ms + delay
        outputs.append(event("retry_scheduled", now_ms, about(req), step_id=cmd["step_id"],
                             agent_version=agent.version,
                             detail={"failed_attempt": cmd["attempt"], "delay_ms": delay,
                                     "ceiling_ms": ceiling,
                                     "retry_after_ms": error["retry_after_ms"] or 0,
                                     "infrastructure": str(infrastructure).lower(),
                                     "error": message_}))
        return Decision(conv, outputs)
    if child is not None and (child["quorum"] or deciding(agent)) and active["failure"] is None:
        # A child of a quorum fan-out: the others may still make the quorum. A deciding
        # agent's delegation: its model reads why the sub-agent failed, as a tool's error,
        # and decides (another sub-agent, a partial answer) instead of failing outright.
        child["outcome"], run["output"] = "failed", f"error: {message_}"
        outputs.append(event("child_failed", now_ms, about(req), step_id=cmd["step_id"],
                             agent_version=agent.version,
                             detail={"attempt": cmd["attempt"], "error": message_}))
        return _step_done(conv, active, agent, now_ms, rules, outputs)
    letter = dead_letter(req, run["attempts"], cmd, error["error_class"], error["message"],
                         now_ms)
    dlq_id = letter.record["dlq_id"]  # type: ignore[typeddict-item]
    outputs.append(letter)
    outputs.append(event("dead_lettered", now_ms, about(req), step_id=cmd["step_id"],
                         agent_version=agent.version,
                         detail={"dlq_id": dlq_id, "error": message_}))
    outputs += _drop_steps(active, f"a sibling step failed: {message_}", now_ms)
    if active["failure"] is not None:  # a compensation gave up: go on with the others
        return _compensate_next(conv, active, agent, now_ms, rules, outputs)
    reason = (f"the {step_name(cmd)} step failed after {cmd['attempt']} attempt(s) "
              f"({message_}); dead letter {dlq_id}")
    return _fail(conv, active, agent, reason, now_ms, rules, outputs)


def _drop_steps(active: ActiveRequest, reason: str, now_ms: int) -> list[Output]:
    """The turn is over before its steps are all back: its children in flight are
    cancelled (their answers would go unread, their spending on)."""
    outputs = delegation.cancel_running(active, reason, now_ms)
    active["steps"] = []
    return outputs


def _fail(conv: Conversation, active: ActiveRequest, agent: AgentSpec, reason: str,
          now_ms: int, rules: Rules, outputs: list[Output],
          reason_kind: ReasonKind | None = None) -> Decision:
    outputs += _drop_steps(active, f"the parent request failed: {reason}", now_ms)
    if not active["effects"]:
        return _finish(conv, active, agent, "failed", "", reason, now_ms, rules, outputs,
                       reason_kind=reason_kind)
    failure: Failure = {"status": "failed", "reason": reason}
    if reason_kind is not None:
        failure["reason_kind"] = reason_kind
    active["failure"] = failure
    outputs.append(event("saga_compensating", now_ms, about(active["request"]),
                         agent_version=agent.version,
                         detail={"steps": len(active["effects"]), "reason": reason}))
    return _compensate_next(conv, active, agent, now_ms, rules, outputs)


def _compensate_next(conv: Conversation, active: ActiveRequest, agent: AgentSpec,
                     now_ms: int, rules: Rules, outputs: list[Output]) -> Decision:
    """Undo completed mutating steps, last first; then answer with the failure."""
    failure = active["failure"]
    assert failure is not None
    if not active["effects"]:
        active["steps"] = []
        return _finish(conv, active, agent, failure["status"], "", failure["reason"], now_ms,
                       rules, outputs, reason_kind=failure.get("reason_kind"))
    effect = active["effects"].pop()
    req = active["request"]
    spec = rules.catalog.tool_spec(effect["compensation"])
    arguments = {"step_id": effect["step_id"],
                 "arguments": json.loads(effect["arguments_json"]), "output": effect["output"]}
    tool: ToolCall = {"name": effect["compensation"], "version": spec.version if spec else "?",
                      "arguments_json": canonical_json(arguments), "mutating": True,
                      "call_id": None}
    limit = rules.policy.step_limit_ms(req["lane"], agent.step_timeout_s, spec)
    cmd = step_command(req, active["run"], active["step_index"], "tool", now_ms, limit, None,
                       tool, key_input={"compensate": effect["step_id"]})
    active["steps"] = [new_run(cmd)]
    return Decision(conv, outputs + _issue(active, active["steps"][0], agent, now_ms, rules))


def _finish(conv: Conversation, active: ActiveRequest, agent: AgentSpec, status: AnswerStatus,
            text: str, reason: str | None, now_ms: int, rules: Rules, outputs: list[Output],
            tool_calls: list[FunctionCall] | None = None,
            reason_kind: ReasonKind | None = None) -> Decision:
    req = active["request"]
    reply = answer(req, status, text, reason, now_ms, agent.version, active,
                   tool_calls=tool_calls, reason_kind=reason_kind)
    outputs.append(reply)
    assert reply.answer is not None
    to_parent = delegation.parent_result(reply.answer, active.get("started_at_ms",
                                                                  req["created_at_ms"]),
                                         list(active["effects"]))
    if to_parent is not None:
        outputs.append(to_parent)
    outputs.append(event("answer_emitted", now_ms, about(req), agent_version=agent.version,
                         detail={"status": status, "reason": reason or ""}))
    archive: list[tuple[str, Exchange]] = []
    if status == "ok" and text:
        exchange: Exchange = {"request_id": req["request_id"], "user": req["text"],
                              "assistant": text}
        archive.append((req["conversation_id"], exchange))
        _remember(conv, exchange, agent, req, rules.policy)
    conv["active"] = None
    while conv["waiting"] and conv["active"] is None:
        nxt = conv["waiting"].pop(0)
        run = int(nxt["options"].pop("run", "0"))
        started = _start(conv, nxt, run, now_ms, rules)
        outputs += started.outputs
        archive += started.archive
    return Decision(conv, outputs, archive=archive)


def _remember(conv: Conversation, exchange: Exchange, agent: AgentSpec, req: AgentRequest,
              policy: Policy) -> None:
    """Keep the exchange for the next prompts, bounded: only as many exchanges as a prompt
    takes, each side cut to ``context_exchange_chars`` (the recall archive has it whole),
    so the conversation's state does not grow with its length."""
    limit = policy.context_exchange_chars

    def cut(text: str) -> str:
        return text if len(text) <= limit else text[:limit] + " [...]"

    conv["exchanges"].append({"request_id": exchange["request_id"],
                              "user": cut(exchange["user"]),
                              "assistant": cut(exchange["assistant"])})
    kept = max(policy.context_exchanges, context_kept(agent, req, policy))
    del conv["exchanges"][:-kept]


# ---------------------------------------------------------------------------- time

def next_due_ms(conv: Conversation | None, rules: Rules) -> int | None:
    """When this conversation next needs a wake-up, or None if it is idle."""
    if conv is None:
        return None
    due = [w["deadline_ms"] for w in conv["waiting"]]
    active = conv["active"]
    if active is not None:
        if active["failure"] is None:
            due.append(active["request"]["deadline_ms"])
        for run in active["steps"]:
            if run["output"] is not None:
                continue
            due.append(run["retry_at_ms"] if run["retry_at_ms"] is not None else
                       _give_up_at(run, rules))
    return min(due) if due else None


def _give_up_at(run: StepRun, rules: Rules) -> int:
    """When an attempt with no result is given up: 3x its run-time limit, or for a
    delegation a grace after the child's own deadline."""
    if delegation.is_delegation(run):
        return delegation.give_up_at(run, rules.policy)
    cmd = run["cmd"]
    return cmd["issued_at_ms"] + rules.policy.budget_ms(cmd["timeout_ms"])


def on_wakeup(conv: Conversation | None, now_ms: int, rules: Rules) -> Decision:
    """Expired waiting requests are answered; then the active request's deadline, due
    retries or outlived attempts are handled. A wake-up with nothing due changes nothing."""
    if conv is None:
        return Decision(None)
    outputs: list[Output] = []
    for req in [w for w in conv["waiting"] if now_ms >= w["deadline_ms"]]:
        conv["waiting"].remove(req)
        outputs.append(answer(req, "failed", "", "deadline passed while queued behind an "
                              "earlier request of the conversation", now_ms, "none",
                              reason_kind="deadline"))
    active = conv["active"]
    if active is None:
        return Decision(conv, outputs)
    agent = _agent(rules, active)
    req = active["request"]
    if active["failure"] is None and now_ms >= req["deadline_ms"]:
        running = [run["cmd"]["step_id"] for run in active["steps"] if run["output"] is None]
        outputs.append(event("deadline_exceeded", now_ms, about(req),
                             agent_version=agent.version,
                             step_id=running[0] if running else None))
        reason = "deadline exceeded: the request was not answered in time"
        if deciding(agent) and so_far(active):
            return _stop_at_limit(conv, active, agent, reason, now_ms, rules, outputs,
                                  reason_kind="deadline")
        return _fail(conv, active, agent, reason, now_ms, rules, outputs,
                     reason_kind="deadline")
    for run in list(active["steps"]):
        if run["output"] is not None:
            continue
        cmd = run["cmd"]
        if run["retry_at_ms"] is not None:
            if now_ms >= run["retry_at_ms"]:
                run["cmd"] = {**cmd, "attempt": cmd["attempt"] + 1, "issued_at_ms": now_ms}
                outputs += _issue(active, run, agent, now_ms, rules)
            continue
        give_up = _give_up_at(run, rules)
        if now_ms < give_up:
            continue
        budget = give_up - cmd["issued_at_ms"]
        outputs.append(event("step_timed_out", now_ms, about(req), step_id=cmd["step_id"],
                             agent_version=agent.version,
                             detail={"attempt": cmd["attempt"], "budget_ms": budget}))
        error: StepError = {
            "error_class": "StepTimeout", "retryable": True, "retry_after_ms": None,
            "infrastructure": False,
            "message": f"no result within {budget} ms" + (
                " (the sub-agent's deadline and a grace)" if delegation.is_delegation(run)
                else f" ({rules.policy.budget_factor:g}x the step's run-time limit)")}
        if delegation.is_delegation(run):  # its child is given up: no orphan
            outputs += delegation.cancel_child(active, run, "it did not answer in time",
                                               now_ms)
        if active.get("cancelled"):  # no retry: the request is being cancelled
            run["output"] = f"error: {error['message']}"
            decision = _step_done(conv, active, agent, now_ms, rules, outputs)
        else:
            decision = _step_failed(conv, active, run, agent, error, now_ms, rules, outputs)
        if conv["active"] is not active or run not in active["steps"]:
            return decision  # the request failed or moved on
        outputs = decision.outputs
    return Decision(conv, outputs)


def on_cancel(conv: Conversation | None, cancel: CancelRecord, now_ms: int, rules: Rules
              ) -> Decision:
    """Stop a request, between steps: it issues nothing new (a retry that waits is
    dropped), its children are cancelled at once, its steps in flight finish (a mutating
    one's effect then joins the saga), its effects are compensated and it is answered
    ``failed`` with the reason. A cancel for a request that is not here yet (a child's
    request and its cancel travel on different topics) is kept for when it comes."""
    conv = conv or empty_conversation()
    request_id, reason = cancel["request_id"], cancel["reason"]
    by = cancel["by_request_id"] or "client"
    for req in list(conv["waiting"]):
        if req["request_id"] == request_id:
            conv["waiting"].remove(req)
            return Decision(conv, [
                answer(req, "failed", "", f"cancelled: {reason}", now_ms, "none"),
                event("request_cancelled", now_ms, about(req),
                      detail={"reason": reason, "by": by, "queued": "true"})])
    active = conv["active"]
    if active is None or active["request"]["request_id"] != request_id:
        early = conv.setdefault("cancelled", {})
        early[request_id] = reason
        for old in list(early)[:-MAX_EARLY_CANCELS]:
            del early[old]
        subject: Subject = {"conversation_id": cancel["conversation_id"],
                            "request_id": request_id, "trace_id": None, "agent": None}
        return Decision(conv, [event("cancel_recorded", now_ms, subject,
                                     detail={"reason": reason, "by": by})])
    agent = _agent(rules, active)
    if active["failure"] is not None or active.get("cancelled"):
        return Decision(conv, [event("cancel_ignored", now_ms, about(active["request"]),
                                     detail={"reason": reason, "by": by,
                                             "why": "already failing or cancelled"})])
    active["cancelled"] = reason
    for run in active["steps"]:
        if run["output"] is None and run["retry_at_ms"] is not None:
            run["output"] = "error: cancelled while waiting for a retry"
    outputs = [event("request_cancelled", now_ms, about(active["request"]),
                     agent_version=agent.version, detail={"reason": reason, "by": by})]
    return _step_done(conv, active, agent, now_ms, rules, outputs)


# ---------------------------------------------------------------------------- failures of ours

def refuse_unprocessable(req: AgentRequest, reason: str, now_ms: int) -> Decision:
    """A request whose handling raised (its letter is in the DLQ): answered ``failed``
    with the reason, and recorded so a redelivery gets no second answer."""
    outputs = [answer(req, "failed", "", reason, now_ms, "none"),
               event("answer_emitted", now_ms, about(req),
                     detail={"status": "failed", "reason": reason})]
    dedup: DedupEntry = {"request_id": req["request_id"], "status": "answered",
                         "answer_status": "failed", "redriven": [],
                         "content": admission.request_content(req)}
    return Decision(None, outputs, dedup)


def abort(conv: Conversation, reason: str, now_ms: int, rules: Rules) -> Decision:
    """Fail the conversation's running request (compensating its effects first) when its
    next event cannot be handled, or its state cannot be stored. Its text, transcript and
    steps in flight are dropped from the state: they may be what made it too large."""
    active = conv["active"]
    if active is None:
        return Decision(conv)
    active["request"] = {**active["request"], "text": "", "messages": []}
    active["transcript"] = []
    cancels = _drop_steps(active, f"the parent request was aborted: {reason}", now_ms)
    agent = active_agent(rules.catalog, active)
    if agent is None:
        return hard_abort(conv, reason, now_ms)
    outputs = [*cancels, event("request_aborted", now_ms, about(active["request"]),
                               agent_version=agent.version, detail={"reason": reason})]
    return _fail(conv, active, agent, reason, now_ms, rules, outputs)


def hard_abort(conv: Conversation, reason: str, now_ms: int) -> Decision:
    """The last resort when even :func:`abort` cannot run: every request of the
    conversation, running or queued, is answered ``failed``; its exchanges stay."""
    requests = [a["request"] for a in [conv["active"]] if a] + conv["waiting"]
    outputs: list[Output] = []
    for req in requests:
        outputs += [answer(req, "failed", "", reason, now_ms, "none"),
                    event("request_aborted", now_ms, about(req), detail={"reason": reason})]
    conv["active"] = None
    conv["waiting"] = []
    return Decision(conv, outputs)


def state_bytes(conv: Conversation) -> int:
    """The state's size as the table stores it (JSON)."""
    return len(json.dumps(conv))


def keep_within(decision: Decision, max_bytes: int, now_ms: int, rules: Rules) -> Decision:
    """``decision``, unless its state would be too large to store: then its running request
    is failed with the reason (its payload dropped) instead, so nothing is lost to a table
    write that cannot succeed."""
    conv = decision.conversation
    if conv is None:
        return decision
    size = state_bytes(conv)
    if size <= max_bytes:
        return decision
    reason = (f"the conversation's state would be {size} bytes, over the limit of "
              f"{max_bytes} (max_state_bytes)")
    aborted = abort(conv, reason, now_ms, rules)
    if aborted.conversation is not None and state_bytes(aborted.conversation) > max_bytes:
        aborted = hard_abort(aborted.conversation, reason, now_ms)
    kept = [o for o in decision.outputs if o.command is None]  # its steps will not run
    return Decision(aborted.conversation, kept + aborted.outputs, decision.dedup,
                    decision.archive)
