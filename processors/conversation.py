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

from clawstream.processors.agents import AgentSpec, Catalog, ModelStep, ToolStep
from clawstream.processors.caching.control import control_for_request
from clawstream.processors.caching.report import merge_records
from clawstream.processors.keys import canonical_json, content_hash
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
    empty_conversation,
)
from clawstream.processors.validation import Rejection, request_problem
from clawstream.schemas.records import (
    AgentRequest,
    AnswerStatus,
    Message,
    ModelCall,
    StepCommand,
    StepError,
    StepResult,
    TimelineEntry,
    ToolCall,
    empty_usage,
)

__all__ = ["Decision", "Output", "Rules", "abort", "build_messages", "fresh_dedup",
           "hard_abort", "keep_within", "needs_gate", "next_due_ms", "on_request", "on_result",
           "on_wakeup", "refuse_unprocessable"]

MAX_CONFLICTS_KEPT = 20


@dataclass(frozen=True)
class Rules:
    """What the rules consult besides the state, the event and the time: the retry and
    budget policy and the catalog of agents and tools. Passed in, never read from globals,
    so the same events replay to the same outputs on any worker."""

    policy: Policy
    catalog: Catalog


@dataclass
class Decision:
    conversation: Conversation | None
    outputs: list[Output] = field(default_factory=list)
    dedup: DedupEntry | None = None
    """The request's new dedup entry (on_request only); answers mark it answered."""
    archive: list[tuple[str, Exchange]] = field(default_factory=list)
    """Answered exchanges, whole, for the recall archive (conversation id, exchange)."""


def build_messages(agent: AgentSpec, conv: Conversation, req: AgentRequest, notes: str | None,
                   default_exchanges: int) -> list[Message]:
    """System prompt, the last N exchanges, then the new question (with the tools' notes)."""
    messages: list[Message] = [{"role": "system", "content": agent.system_prompt}]
    kept = agent.context_exchanges or default_exchanges
    for ex in conv["exchanges"][-kept:]:
        messages.append({"role": "user", "content": ex["user"]})
        messages.append({"role": "assistant", "content": ex["assistant"]})
    question = req["text"]
    if notes:
        question = f"Notes:\n{notes}\n\nQuestion: {question}"
    messages.append({"role": "user", "content": question})
    return messages


def _agent(rules: Rules, active: ActiveRequest) -> AgentSpec:
    agent = rules.catalog.agent(active["request"]["agent"])
    assert agent is not None  # checked when the request started
    return agent


def _pending(active: ActiveRequest) -> StepCommand:
    pending = active["pending"]
    assert pending is not None
    return pending


# ---------------------------------------------------------------------------- issuing steps

@dataclass(frozen=True)
class PlanError:
    """The agent's plan raised while building a step's command for this request."""

    step: str
    error_class: str
    message: str


def _plan_command(conv: Conversation, active: ActiveRequest, agent: AgentSpec, now_ms: int,
                  rules: Rules) -> StepCommand | PlanError:
    req, index = active["request"], active["step_index"]
    step = agent.plan[index]
    cache = control_for_request(req["options"], agent.cache_ttl_s)
    if isinstance(step, ToolStep):
        spec = rules.catalog.tool_spec(step.tool)
        try:  # the plan is the team's code: whatever it raises fails this request only
            arguments_json = canonical_json(step.arguments(req))
        except Exception as exc:
            return PlanError(step.tool, type(exc).__name__, str(exc)[:500] or repr(exc))
        tool: ToolCall = {"name": step.tool, "version": spec.version if spec else "?",
                          "arguments_json": arguments_json,
                          "mutating": bool(spec and spec.mutating)}
        limit = rules.policy.step_limit_ms(req["lane"], agent.step_timeout_s, spec)
        return step_command(req, active["run"], index, "tool", now_ms, limit, None, tool,
                            cache=cache)
    assert isinstance(step, ModelStep)
    call: ModelCall = {
        "model": "default",
        "prompt_version": agent.prompt_version,
        "messages": build_messages(agent, conv, req, active["notes"],
                                   rules.policy.context_exchanges),
        "max_tokens": agent.max_tokens,
        "temperature": agent.temperature,
    }
    limit = rules.policy.step_limit_ms(req["lane"], agent.step_timeout_s, None)
    return step_command(req, active["run"], index, "model", now_ms, limit, call, None,
                        cache=cache)


def _issue_next(conv: Conversation, active: ActiveRequest, agent: AgentSpec, now_ms: int,
                rules: Rules, outputs: list[Output]) -> Decision:
    """Issue the plan's step at ``active["step_index"]``, or fail the request if the plan
    cannot build it (dead-lettered, so it can be redriven once the agent is fixed)."""
    planned = _plan_command(conv, active, agent, now_ms, rules)
    if not isinstance(planned, PlanError):
        return Decision(conv, outputs + _issue(active, planned, agent, now_ms))
    req = active["request"]
    step_id = f"plan:{req['conversation_id']}:{req['request_id']}:{active['step_index']}"
    letter = plan_letter(req, step_id, planned.step, planned.error_class, planned.message,
                         now_ms)
    dlq_id = letter.record["dlq_id"]  # type: ignore[typeddict-item]
    message = f"{planned.error_class}: {planned.message}"
    outputs += [letter, event("dead_lettered", now_ms, about(req), step_id=step_id,
                              agent_version=agent.version,
                              detail={"dlq_id": dlq_id, "error": message})]
    reason = (f"the agent could not plan its {planned.step} step for this request "
              f"({message}); dead letter {dlq_id}")
    return _fail(conv, active, agent, reason, now_ms, rules, outputs)


def _issue(active: ActiveRequest, cmd: StepCommand, agent: AgentSpec, now_ms: int
           ) -> list[Output]:
    active["pending"] = cmd
    active["retry_at_ms"] = None
    if cmd["attempt"] == 1:
        active["attempts"] = []
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
                                 "attempt": cmd["attempt"], "timeout_ms": cmd["timeout_ms"]}))
    outputs.append(command_output(cmd))
    return outputs


def _start(conv: Conversation, req: AgentRequest, run: int, now_ms: int, rules: Rules
           ) -> Decision:
    agent = rules.catalog.agent(req["agent"])
    if agent is None:
        return Decision(conv, _reject_unknown_agent(req, now_ms))
    active: ActiveRequest = {
        "request": req, "run": run, "step_index": 0, "pending": None, "retry_at_ms": None,
        "attempts": [], "notes": None, "last_output": "", "timeline": [],
        "usage": empty_usage(), "effects": [], "failure": None}
    conv["active"] = active
    if now_ms >= req["deadline_ms"]:
        return _finish(conv, active, agent, "failed", "",
                       "deadline passed before the request started", now_ms, rules,
                       [])
    return _issue_next(conv, active, agent, now_ms, rules, [])


def _reject_unknown_agent(req: AgentRequest, now_ms: int) -> list[Output]:
    reason = f"unknown agent {req['agent']!r}"
    return [answer(req, "rejected", "", reason, now_ms, "none"),
            event("request_rejected", now_ms, about(req), detail={"reason": reason})]


# ---------------------------------------------------------------------------- requests

def request_content(req: AgentRequest) -> str:
    """What the request asks, as a hash: a client's retry under its idempotency key has the
    same; a redrive too (its mark is left out)."""
    options = {k: v for k, v in req["options"].items() if k != "redrive_of"}
    return content_hash({"agent": req["agent"], "text": req["text"], "lane": req["lane"],
                         "user_id": req["user_id"], "options": options})


def fresh_dedup(dedup: DedupEntry | None, req: AgentRequest) -> DedupEntry | None:
    """The dedup entry that applies to ``req``. A rejected request may be sent again under
    the same idempotency key (the rejection said when): a new request id is the client's
    retry and is checked afresh; the same request id is a redelivery of the rejected one and
    stays a duplicate (one answer)."""
    if (dedup and dedup.get("answer_status") == "rejected"
            and dedup["request_id"] != req["request_id"]
            and req["request_id"] not in dedup.get("conflicts", [])):
        return None
    return dedup


def needs_gate(dedup: DedupEntry | None, req: AgentRequest, rules: Rules) -> bool:
    """Whether the entrance limits must be asked about ``req`` (a new, valid request)."""
    return dedup is None and request_problem(req, rules.policy) is None


def on_request(conv: Conversation | None, dedup: DedupEntry | None, req: AgentRequest,
               now_ms: int, rules: Rules, source: str = "",
               rejection: Rejection | None = None) -> Decision:
    """``dedup``: :func:`fresh_dedup` of the table's entry; ``source``: where the request
    was read (a redelivery comes from the same place); ``rejection``: the entrance limits'
    answer for a request :func:`needs_gate` said to ask about."""
    if dedup is not None:
        return _known_key(conv or empty_conversation(), dedup, req, now_ms, rules, source)
    problem = request_problem(req, rules.policy)
    if problem is not None:
        rejection = Rejection("invalid_request", f"invalid request: {problem}", 0.0)
    if rejection is not None:
        return reject(conv, req, rejection, now_ms)
    conv = conv or empty_conversation()
    dedup = {"request_id": req["request_id"], "status": "in_progress", "redriven": [],
             "content": request_content(req), "source": source}
    return _admit(conv, dedup, req, 0,
                  [event("request_received", now_ms, about(req))], now_ms, rules)


def _known_key(conv: Conversation, dedup: DedupEntry, req: AgentRequest, now_ms: int,
               rules: Rules, source: str) -> Decision:
    """A request whose idempotency key was seen: a redrive, a duplicate, or a conflict."""
    conflicts = dedup.get("conflicts", [])
    if req["request_id"] in conflicts:  # a refused conflict, read again: no second answer
        return Decision(conv, [event("request_duplicate", now_ms, about(req),
                                     detail={"first_request_id": req["request_id"]})], dedup)
    content = dedup.get("content")
    if (content is not None and content != request_content(req)
            and req["request_id"] != dedup["request_id"]):
        reason = (f"idempotency key {req['idempotency_key']!r} was used for a different "
                  f"request ({dedup['request_id']}); use a new key for a new request")
        refused = reject(None, req, Rejection("idempotency_conflict", reason, 0.0), now_ms)
        kept: DedupEntry = {**dedup, "conflicts": [*conflicts, req["request_id"]]
                            [-MAX_CONFLICTS_KEPT:]}
        return Decision(conv, refused.outputs, kept)
    redrive_of = req["options"].get("redrive_of")
    redriven = list(dedup.get("redriven", []))
    if not (redrive_of and dedup.get("answer_status") == "failed"
            and redrive_of not in redriven):
        return _duplicate(conv, dedup, req, now_ms, source)
    run = len(redriven) + 1
    dedup = {**dedup, "status": "in_progress", "redriven": [*redriven, redrive_of],
             "source": source}
    return _admit(conv, dedup, req, run, [event("request_redriven", now_ms, about(req),
                                                detail={"dlq_id": redrive_of, "run": run})],
                  now_ms, rules)


def _admit(conv: Conversation, dedup: DedupEntry, req: AgentRequest, run: int,
           outputs: list[Output], now_ms: int, rules: Rules) -> Decision:
    """Start the request now, or queue it behind the conversation's running one."""
    if conv["active"] is None:
        started = _start(conv, req, run, now_ms, rules)
        return Decision(conv, outputs + started.outputs, dedup, started.archive)
    conv["waiting"].append({**req, "options": {**req["options"], "run": str(run)}})
    return Decision(conv, outputs, dedup)


def reject(conv: Conversation | None, req: AgentRequest, rejection: Rejection, now_ms: int
           ) -> Decision:
    """Answer ``req`` ``rejected`` with the reason; the conversation is left as it was."""
    outputs = [answer(req, "rejected", "", rejection.reason, now_ms, "none"),
               event("request_rejected", now_ms, about(req),
                     detail={"reason": rejection.reason, "kind": rejection.kind,
                             "retry_after_s": f"{rejection.retry_after_s:.3f}"})]
    dedup: DedupEntry = {"request_id": req["request_id"], "status": "answered",
                         "answer_status": "rejected", "redriven": [],
                         "content": request_content(req)}
    return Decision(conv, outputs, dedup)


def _duplicate(conv: Conversation, dedup: DedupEntry, req: AgentRequest, now_ms: int,
               source: str) -> Decision:
    outputs = [event("request_duplicate", now_ms, about(req),
                     detail={"first_request_id": dedup["request_id"]})]
    active = conv["active"]
    # The very record read again (a crash before its offset was committed): re-issue the
    # pending step, in case the crash came before it left. Never for another record under
    # the same key (a client's duplicate), and not while a retry waits for its time (the
    # sweep issues that one): each would run the step once more.
    if (source and dedup.get("source") == source and active
            and active["request"]["request_id"] == dedup["request_id"]
            and active["pending"] and active["retry_at_ms"] is None):
        outputs.append(command_output(active["pending"]))
    return Decision(conv, outputs, dedup)


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
    }


def _is_pending(active: ActiveRequest | None, res: StepResult) -> bool:
    pending = active["pending"] if active else None
    return bool(active and pending and active["retry_at_ms"] is None
                and (pending["step_id"], pending["attempt"]) == (res["step_id"], res["attempt"]))


def on_result(conv: Conversation | None, res: StepResult, now_ms: int, rules: Rules
              ) -> Decision:
    active = conv["active"] if conv else None
    if conv is None or active is None or not _is_pending(active, res):
        return _ignored(conv, active, res, now_ms)
    agent = _agent(rules, active)
    pending = _pending(active)
    active["timeline"].append(_timeline_entry(pending, res, now_ms))
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
        return _step_failed(conv, active, agent, error, now_ms, rules, outputs)
    if active["failure"] is not None:
        tool = pending["tool_call"]
        assert tool is not None  # only compensations run while failing
        outputs.append(event("compensation_completed", now_ms, about(active["request"]),
                             step_id=res["step_id"], agent_version=agent.version,
                             detail={"tool": step_name(pending), "for_step":
                                     json.loads(tool["arguments_json"])["step_id"]}))
        return _compensate_next(conv, active, agent, now_ms, rules, outputs)
    _record_output(active, pending, res["output"], rules)
    active["step_index"] += 1
    if active["step_index"] < len(agent.plan):
        return _issue_next(conv, active, agent, now_ms, rules, outputs)
    return _finish(conv, active, agent, "ok", active["last_output"], None, now_ms, rules,
                   outputs)


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
    """A result for a step or attempt that is not pending (a late attempt, a repeat). Its
    work was done and paid for all the same: counted in the running request's usage when
    it is that request's, and on the event either way (``clawstream cost`` adds those)."""
    mine = active is not None and active["request"]["request_id"] == res["request_id"]
    if mine and active is not None:
        active["usage"] = usage_sum(active["usage"], res["usage"])
    subject: Subject = {"conversation_id": res["conversation_id"],
                        "request_id": res["request_id"], "trace_id": res["trace_id"],
                        "agent": active["request"]["agent"] if active else None}
    return Decision(conv, [event("step_ignored", now_ms, subject, step_id=res["step_id"],
                                 worker=res["worker"],
                                 detail={"reason": "not the pending step or attempt",
                                         "attempt": res["attempt"],
                                         "counted_in_answer": str(mine).lower(),
                                         **_spend(res)})])


def _record_output(active: ActiveRequest, cmd: StepCommand, output: str, rules: Rules
                   ) -> None:
    tool = cmd["tool_call"]
    if tool is None:
        active["last_output"] = output.strip()
        return
    active["notes"] = _notes(output)
    active["last_output"] = output
    spec = rules.catalog.tool_spec(tool["name"])
    if tool["mutating"] and spec is not None and spec.compensation:
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

def _step_failed(conv: Conversation, active: ActiveRequest, agent: AgentSpec,
                 error: StepError, now_ms: int, rules: Rules, outputs: list[Output]
                 ) -> Decision:
    """Retry with backoff when the error allows it and attempts remain; else dead-letter the
    step and fail the request (compensating first), or go on compensating.

    A failure of our own infrastructure (Redis, Kafka or Serve away, a step still being
    applied by another execution) is the step's bad luck, not its fault: it is retried with
    the same backoff until the request's deadline, and uses none of the step's attempts."""
    pending = _pending(active)
    req = active["request"]
    message = f"{error['error_class']}: {error['message']}"
    infrastructure = bool(error.get("infrastructure"))
    active["attempts"].append({"attempt": pending["attempt"], "at_ms": now_ms,
                               "error": message, "infrastructure": infrastructure})
    tool = pending["tool_call"]
    spec = rules.catalog.tool_spec(tool["name"]) if tool else None
    failures = sum(not a.get("infrastructure") for a in active["attempts"])
    if infrastructure or (error["retryable"] and failures < rules.policy.max_attempts(spec)):
        delay, ceiling = retry_delay_ms(rules.policy, pending["step_id"], pending["attempt"],
                                        error["retry_after_ms"])
        active["retry_at_ms"] = now_ms + delay
        outputs.append(event("retry_scheduled", now_ms, about(req), step_id=pending["step_id"],
                             agent_version=agent.version,
                             detail={"failed_attempt": pending["attempt"], "delay_ms": delay,
                                     "ceiling_ms": ceiling,
                                     "retry_after_ms": error["retry_after_ms"] or 0,
                                     "infrastructure": str(infrastructure).lower(),
                                     "error": message}))
        return Decision(conv, outputs)
    letter = dead_letter(req, active["attempts"], pending, error["error_class"],
                         error["message"], now_ms)
    dlq_id = letter.record["dlq_id"]  # type: ignore[typeddict-item]
    outputs.append(letter)
    outputs.append(event("dead_lettered", now_ms, about(req), step_id=pending["step_id"],
                         agent_version=agent.version,
                         detail={"dlq_id": dlq_id, "error": message}))
    active["pending"] = None
    if active["failure"] is not None:  # a compensation gave up: go on with the others
        return _compensate_next(conv, active, agent, now_ms, rules, outputs)
    reason = (f"the {step_name(pending)} step failed after {pending['attempt']} attempt(s) "
              f"({message}); dead letter {dlq_id}")
    return _fail(conv, active, agent, reason, now_ms, rules, outputs)


def _fail(conv: Conversation, active: ActiveRequest, agent: AgentSpec, reason: str,
          now_ms: int, rules: Rules, outputs: list[Output]) -> Decision:
    active["pending"] = None
    active["retry_at_ms"] = None
    if not active["effects"]:
        return _finish(conv, active, agent, "failed", "", reason, now_ms, rules, outputs)
    active["failure"] = {"status": "failed", "reason": reason}
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
        return _finish(conv, active, agent, failure["status"], "", failure["reason"], now_ms,
                       rules, outputs)
    effect = active["effects"].pop()
    req = active["request"]
    spec = rules.catalog.tool_spec(effect["compensation"])
    arguments = {"step_id": effect["step_id"],
                 "arguments": json.loads(effect["arguments_json"]), "output": effect["output"]}
    tool: ToolCall = {"name": effect["compensation"], "version": spec.version if spec else "?",
                      "arguments_json": canonical_json(arguments), "mutating": True}
    limit = rules.policy.step_limit_ms(req["lane"], agent.step_timeout_s, spec)
    cmd = step_command(req, active["run"], active["step_index"], "tool", now_ms, limit, None,
                       tool, key_input={"compensate": effect["step_id"]})
    return Decision(conv, outputs + _issue(active, cmd, agent, now_ms))


def _finish(conv: Conversation, active: ActiveRequest, agent: AgentSpec, status: AnswerStatus,
            text: str, reason: str | None, now_ms: int, rules: Rules, outputs: list[Output]
            ) -> Decision:
    req = active["request"]
    outputs.append(answer(req, status, text, reason, now_ms, agent.version, active))
    outputs.append(event("answer_emitted", now_ms, about(req), agent_version=agent.version,
                         detail={"status": status, "reason": reason or ""}))
    archive: list[tuple[str, Exchange]] = []
    if status == "ok" and text:
        exchange: Exchange = {"request_id": req["request_id"], "user": req["text"],
                              "assistant": text}
        archive.append((req["conversation_id"], exchange))
        _remember(conv, exchange, agent, rules.policy)
    conv["active"] = None
    while conv["waiting"] and conv["active"] is None:
        nxt = conv["waiting"].pop(0)
        run = int(nxt["options"].pop("run", "0"))
        started = _start(conv, nxt, run, now_ms, rules)
        outputs += started.outputs
        archive += started.archive
    return Decision(conv, outputs, archive=archive)


def _remember(conv: Conversation, exchange: Exchange, agent: AgentSpec, policy: Policy
              ) -> None:
    """Keep the exchange for the next prompts, bounded: only as many exchanges as a prompt
    takes, each side cut to ``context_exchange_chars`` (the recall archive has it whole),
    so the conversation's state does not grow with its length."""
    limit = policy.context_exchange_chars

    def cut(text: str) -> str:
        return text if len(text) <= limit else text[:limit] + " [...]"

    conv["exchanges"].append({"request_id": exchange["request_id"],
                              "user": cut(exchange["user"]),
                              "assistant": cut(exchange["assistant"])})
    kept = max(policy.context_exchanges, agent.context_exchanges or 0)
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
        pending = active["pending"]
        if active["retry_at_ms"] is not None:
            due.append(active["retry_at_ms"])
        elif pending is not None:
            due.append(pending["issued_at_ms"] + rules.policy.budget_ms(pending["timeout_ms"]))
    return min(due) if due else None


def on_wakeup(conv: Conversation | None, now_ms: int, rules: Rules) -> Decision:
    """Expired waiting requests are answered; then the active request's deadline, due retry
    or outlived attempt is handled. A wake-up with nothing due changes nothing."""
    if conv is None:
        return Decision(None)
    outputs: list[Output] = []
    for req in [w for w in conv["waiting"] if now_ms >= w["deadline_ms"]]:
        conv["waiting"].remove(req)
        outputs.append(answer(req, "failed", "", "deadline passed while queued behind an "
                              "earlier request of the conversation", now_ms, "none"))
    active = conv["active"]
    if active is None:
        return Decision(conv, outputs)
    agent = _agent(rules, active)
    req, pending = active["request"], active["pending"]
    if active["failure"] is None and now_ms >= req["deadline_ms"]:
        outputs.append(event("deadline_exceeded", now_ms, about(req),
                             agent_version=agent.version,
                             step_id=pending["step_id"] if pending else None))
        return _fail(conv, active, agent,
                     "deadline exceeded: the request was not answered in time", now_ms,
                     rules, outputs)
    if pending is None:
        return Decision(conv, outputs)
    if active["retry_at_ms"] is not None:
        if now_ms < active["retry_at_ms"]:
            return Decision(conv, outputs)
        retry: StepCommand = {**pending, "attempt": pending["attempt"] + 1,
                              "issued_at_ms": now_ms}
        return Decision(conv, outputs + _issue(active, retry, agent, now_ms))
    budget = rules.policy.budget_ms(pending["timeout_ms"])
    if now_ms < pending["issued_at_ms"] + budget:
        return Decision(conv, outputs)
    outputs.append(event("step_timed_out", now_ms, about(req), step_id=pending["step_id"],
                         agent_version=agent.version,
                         detail={"attempt": pending["attempt"], "budget_ms": budget}))
    error: StepError = {
        "error_class": "StepTimeout", "retryable": True, "retry_after_ms": None,
        "infrastructure": False,
        "message": f"no result within {budget} ms ({rules.policy.budget_factor:g}x the "
                   "step's run-time limit)"}
    return _step_failed(conv, active, agent, error, now_ms, rules, outputs)


# ---------------------------------------------------------------------------- failures of ours

def refuse_unprocessable(req: AgentRequest, reason: str, now_ms: int) -> Decision:
    """A request whose handling raised (its letter is in the DLQ): answered ``failed``
    with the reason, and recorded so a redelivery gets no second answer."""
    outputs = [answer(req, "failed", "", reason, now_ms, "none"),
               event("answer_emitted", now_ms, about(req),
                     detail={"status": "failed", "reason": reason})]
    dedup: DedupEntry = {"request_id": req["request_id"], "status": "answered",
                         "answer_status": "failed", "redriven": [],
                         "content": request_content(req)}
    return Decision(None, outputs, dedup)


def abort(conv: Conversation, reason: str, now_ms: int, rules: Rules) -> Decision:
    """Fail the conversation's running request (compensating its effects first) when its
    next event cannot be handled, or its state cannot be stored. Its text and pending
    command are dropped from the state: they may be what made it too large."""
    active = conv["active"]
    if active is None:
        return Decision(conv)
    active["request"] = {**active["request"], "text": ""}
    active["pending"] = None
    active["retry_at_ms"] = None
    agent = rules.catalog.agent(active["request"]["agent"])
    if agent is None:
        return hard_abort(conv, reason, now_ms)
    outputs = [event("request_aborted", now_ms, about(active["request"]),
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
