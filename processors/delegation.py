"""Sub-agents: an agent hands tasks to other agents inside one request (issue 15). Pure
rules, called by :mod:`clawstream.processors.conversation`, like :mod:`.turns`.

A delegation is a step of the parent's turn, like a tool call (it lives in
``active["steps"]``, step type ``agent``), but its command is a **child request**: an
``AgentRequest`` on the coordinator's request stream, run by the child conversation's own
coordinator like any request (caches, limits, lanes, retries, ledger). Everything about
the child derives from the parent's step id and attempt (:func:`child_ids`), so a
redelivered or replayed delegation sends the very same request, which the child's dedup
table answers as a duplicate: never a second child. A retry of a failed child is a new
attempt, hence a new child.

When a child is answered, its coordinator also emits a ``StepResult`` for the parent's
step, keyed by the parent's conversation (:func:`parent_result`): the parent joins its
children exactly as it joins parallel tool calls. The result carries the child's answer
(its timeline follows in the parent's, one level deeper; its usage, which sums its own
subtree, adds to the parent's) and the child's completed effects, which join the parent's
saga.

Contracts flow down (:func:`child_request`): the child's deadline lies inside the
parent's remaining time, its token and cost budget is a share of the parent's remaining
budget, its lane, tenant, user and trace id are the parent's, and the depth limit is the
tightest above it. Past a depth or width limit, or with no budget left, a delegation is
refused at once: for a model, the error is the call's result, which it reads like a
validation error. When the parent fails, is cancelled, passes its deadline or meets its
quorum, its running children get a :data:`~clawstream.schemas.names.CANCEL` record (on the
results topic, keyed by the child's conversation): a child issues no new step, lets its
steps in flight finish, compensates what it did and is answered ``failed``.
"""

from __future__ import annotations

from collections.abc import Sequence

from clawstream.processors.agents import DELEGATE, AgentSpec, FanOut
from clawstream.processors.keys import canonical_json, short_hash
from clawstream.processors.policy import Policy
from clawstream.processors.records import Output, about, event, step_command
from clawstream.processors.state import ActiveRequest, ChildRun, StepRun
from clawstream.processors.turns import PlanError, Rules, json_object, new_run, tool_run
from clawstream.schemas.names import AGENT_ANSWER, AGENT_REQUEST, CANCEL, STEP_RESULT
from clawstream.schemas.records import (
    AgentAnswer,
    AgentRequest,
    Cancel,
    Delegation,
    Effect,
    FunctionCall,
    StepCommand,
    StepError,
    StepResult,
    TimelineEntry,
    ToolCall,
)
from clawstream.streams.topics import RESULTS, delegation_topic

CHILD_WORKER = "sub-agent"
"""The ``worker`` of a delegation step's result: the child's coordinator answered it."""
INHERITED_OPTIONS = ("no-cache", "no_cache", "max_cache_age_s", "max-cache-age-s")
"""A parent's cache choices hold for its children; its budgets reach them as shares."""
GOOD = ("ok", "degraded")
"""Child answers that count as a successful step (and towards a quorum)."""


# ---------------------------------------------------------------------------- contracts

def depth(req: AgentRequest) -> int:
    """0 for a client's request, 1 for its children, ..."""
    delegation = req.get("delegation")
    return delegation["depth"] if delegation else 0


def depth_limit(req: AgentRequest, agent: AgentSpec, policy: Policy) -> int:
    """The deepest level this request's delegations may create: the agent's, the
    runtime's, and whatever its parents allowed, the tightest."""
    delegation = req.get("delegation")
    limits = [agent.max_depth, policy.delegation_max_depth]
    return min([*limits, delegation["max_depth"]] if delegation else limits)


def token_limit(req: AgentRequest, agent: AgentSpec) -> int | None:
    """Tokens this request may spend, its subtree included (None: no limit)."""
    delegation = req.get("delegation")
    limits = [agent.token_budget, delegation["token_budget"] if delegation else None]
    return min((limit for limit in limits if limit is not None), default=None)


def cost_limit(req: AgentRequest, agent: AgentSpec) -> float | None:
    delegation = req.get("delegation")
    limits = [agent.cost_budget_usd, delegation["cost_budget_usd"] if delegation else None]
    return min((limit for limit in limits if limit is not None), default=None)


def child_deadline(parent_deadline_ms: int, now_ms: int, policy: Policy,
                   timeout_s: float | None) -> int:
    """Inside the parent's remaining time, less a reserve for the parent to use the answer
    (at most a quarter of what remains); sooner if the delegation says so."""
    remaining = max(0, parent_deadline_ms - now_ms)
    deadline = parent_deadline_ms - min(policy.delegation_reserve_ms, remaining // 4)
    if timeout_s is not None:
        deadline = min(deadline, now_ms + int(timeout_s * 1000))
    return deadline


def _shares(active: ActiveRequest, agent: AgentSpec, policy: Policy, children: int
            ) -> tuple[int | None, float | None]:
    """Each of ``children`` children's budget: an even split of the share of the parent's
    remaining budget that its children get (the rest is the parent's own)."""
    req, usage = active["request"], active["usage"]
    tokens, cost = token_limit(req, agent), cost_limit(req, agent)
    share = policy.delegation_budget_share / max(1, children)
    spent = usage["prompt_tokens"] + usage["completion_tokens"]
    return (None if tokens is None else max(0, int((tokens - spent) * share)),
            None if cost is None else max(0.0, (cost - usage["cost_usd"]) * share))


def _refusal(active: ActiveRequest, agent: AgentSpec, policy: Policy, position: int,
             width: int, budgets: tuple[int | None, float | None]) -> str | None:
    """Why the ``position``-th of ``width`` delegations of a turn may not start, or None."""
    req = active["request"]
    level, deepest = depth(req) + 1, depth_limit(req, agent, policy)
    if level > deepest:
        return (f"delegation refused: depth limit reached (a sub-agent here would be at "
                f"depth {level}; the limit for {agent.name} is {deepest})")
    widest = min(agent.max_fanout, policy.delegation_max_fanout)
    if position >= widest:
        return (f"delegation refused: fan-out limit reached ({agent.name} may run at most "
                f"{widest} sub-agents at once; this turn asked for {width})")
    tokens, cost = budgets
    if tokens is not None and tokens < 1:
        return "delegation refused: no token budget left for a sub-agent"
    if cost is not None and cost <= 0:
        return "delegation refused: no cost budget left for a sub-agent"
    return None


# ---------------------------------------------------------------------------- turns

def call_turn(active: ActiveRequest, agent: AgentSpec, calls: list[FunctionCall],
              now_ms: int, rules: Rules) -> list[StepRun]:
    """The steps of a model's calls, in its order: tool calls (:func:`.turns.tool_run`) and
    delegations. A delegation the runtime refuses (an agent that is not a sub-agent, no
    task, past a depth, width or budget limit) is answered at once with the reason."""
    delegations = [c for c in calls if c["name"] == DELEGATE and agent.subagents]
    budgets = _shares(active, agent, rules.policy, len(delegations))
    runs, position = [], 0
    for index, call in enumerate(calls):
        if call not in delegations:
            runs.append(tool_run(active, agent, call, index, now_ms, rules))
            continue
        arguments = json_object(call["arguments_json"]) or {}
        name, task = str(arguments.get("agent", "")), str(arguments.get("task", ""))
        sub = agent.subagent(name)
        problem = (f"unknown sub-agent {name!r}; the sub-agents are: "
                   f"{', '.join(s.agent for s in agent.subagents)}" if sub is None else
                   "the task is empty" if not task.strip() else
                   _refusal(active, agent, rules.policy, position, len(delegations), budgets))
        position += 1
        child: ChildRun = {"agent": name, "task": task,
                           "max_attempts": sub.attempts if sub else 1,
                           "timeout_s": sub.timeout_s if sub else None,
                           "token_budget": budgets[0], "cost_budget_usd": budgets[1],
                           "quorum": None, "request": None, "outcome": None}
        run = _delegation_run(active, child, index, call["id"], now_ms, rules)
        if problem is not None:
            run["output"] = f"error: {problem}"
        runs.append(run)
    return runs


def fan_out_turn(active: ActiveRequest, agent: AgentSpec, step: FanOut, now_ms: int,
                 rules: Rules) -> list[StepRun] | PlanError:
    """A plan's :class:`FanOut` step: one child per (agent, task) pair. A fan-out the
    limits refuse is the plan's error (it is declared, not chosen by a model)."""
    req = active["request"]
    try:  # the tasks come from the team's code: whatever it raises fails this request
        tasks = [str(task) for task in step.tasks(req)]
    except Exception as exc:
        return PlanError("fan-out", type(exc).__name__, str(exc)[:500] or repr(exc))
    pairs = _pairs(step.agents, tasks)
    if isinstance(pairs, str):
        return PlanError("fan-out", "FanOutInvalid", pairs)
    budgets = _shares(active, agent, rules.policy, len(pairs))
    runs = []
    for position, (name, task) in enumerate(pairs):
        problem = ("task is empty" if not task.strip() else
                   _refusal(active, agent, rules.policy, position, len(pairs), budgets))
        if problem is not None:
            return PlanError("fan-out", "DelegationRefused", f"child {position}: {problem}")
        child: ChildRun = {"agent": name, "task": task, "max_attempts": step.attempts,
                           "timeout_s": step.timeout_s, "token_budget": budgets[0],
                           "cost_budget_usd": budgets[1],
                           "quorum": min(step.quorum, len(pairs)) if step.quorum else None,
                           "request": None, "outcome": None}
        runs.append(_delegation_run(active, child, position, None, now_ms, rules))
    return runs


def _pairs(agents: Sequence[str], tasks: list[str]) -> list[tuple[str, str]] | str:
    if not tasks:
        return "the fan-out has no tasks"
    if len(tasks) == 1:
        return [(name, tasks[0]) for name in agents]
    if len(agents) == 1:
        return [(agents[0], task) for task in tasks]
    if len(agents) != len(tasks):
        return (f"{len(agents)} agents and {len(tasks)} tasks: give one task, one agent, "
                "or as many of each")
    return list(zip(agents, tasks, strict=True))


def _delegation_run(active: ActiveRequest, child: ChildRun, position: int,
                    call_id: str | None, now_ms: int, rules: Rules) -> StepRun:
    """A delegation step; its id is the step key of (request, run, turn position, agent,
    task), so the child's ids (:func:`child_ids`) are fixed by what the parent decided."""
    req = active["request"]
    spec = rules.catalog.agent(child["agent"])
    tool: ToolCall = {"name": child["agent"], "version": spec.version if spec else "?",
                      "arguments_json": canonical_json({"agent": child["agent"],
                                                        "task": child["task"]}),
                      "mutating": False, "call_id": call_id}
    index = active["step_index"] + position
    deadline = child_deadline(req["deadline_ms"], now_ms, rules.policy, child["timeout_s"])
    cmd = step_command(req, active["run"], index, "agent", now_ms, max(0, deadline - now_ms),
                       None, tool, key_input={"request_id": req["request_id"],
                                              "run": active["run"], "index": index,
                                              "call": tool})
    run = new_run({**cmd, "deadline_ms": deadline})
    run["child"] = child
    return run


def is_delegation(run: StepRun) -> bool:
    return "child" in run


# ---------------------------------------------------------------------------- children

def child_ids(step_id: str, attempt: int, parent_conversation_id: str, agent: str
              ) -> tuple[str, str]:
    """(request id, conversation id) of the child of one attempt of a delegation step: the
    same on every replay, a new pair for a retry. The conversation id starts with the
    parent's (cut, so a deep tree stays under the id limit) and names the agent."""
    digest = short_hash({"step_id": step_id, "attempt": attempt})
    return f"sub-{digest}", f"{parent_conversation_id[:64]}>{agent[:48]}-{digest}"


def child_request(active: ActiveRequest, run: StepRun, agent: AgentSpec, now_ms: int,
                  policy: Policy) -> AgentRequest:
    """The child request of the run's current attempt, its contracts from the parent's."""
    req, cmd, child = active["request"], run["cmd"], run["child"]
    request_id, conversation_id = child_ids(cmd["step_id"], cmd["attempt"],
                                            req["conversation_id"], child["agent"])
    parent = req.get("delegation")
    delegation: Delegation = {
        "parent_conversation_id": req["conversation_id"], "parent_attempt": cmd["attempt"],
        "root_request_id": parent["root_request_id"] if parent else req["request_id"],
        "depth": depth(req) + 1, "max_depth": depth_limit(req, agent, policy),
        "token_budget": child["token_budget"], "cost_budget_usd": child["cost_budget_usd"]}
    return {
        "request_id": request_id, "idempotency_key": request_id,
        "conversation_id": conversation_id, "tenant_id": req["tenant_id"],
        "user_id": req["user_id"], "agent": child["agent"], "lane": req["lane"],
        "text": child["task"], "created_at_ms": now_ms,
        "deadline_ms": child_deadline(req["deadline_ms"], now_ms, policy, child["timeout_s"]),
        "trace_id": req["trace_id"],
        "options": {k: v for k, v in req["options"].items() if k in INHERITED_OPTIONS},
        "messages": [], "tools": [], "parent_request_id": req["request_id"],
        "parent_step_id": cmd["step_id"], "delegation": delegation}


def issue(active: ActiveRequest, run: StepRun, agent: AgentSpec, now_ms: int,
          policy: Policy) -> list[Output]:
    """Send the child of the run's current attempt (a new child for a new attempt)."""
    child, cmd = run["child"], run["cmd"]
    request = child["request"]
    delegation = request.get("delegation") if request else None
    if request is None or delegation is None or delegation["parent_attempt"] != cmd["attempt"]:
        request = child["request"] = child_request(active, run, agent, now_ms, policy)
        child["outcome"] = None  # a new attempt, a new child
        run["cmd"] = {**cmd, "timeout_ms": max(0, request["deadline_ms"] - now_ms),
                      "deadline_ms": request["deadline_ms"]}
    issued = event("step_issued", now_ms, about(active["request"]), step_id=cmd["step_id"],
                   agent_version=agent.version,
                   detail={"step_type": "agent", "name": child["agent"],
                           "attempt": cmd["attempt"], "timeout_ms": run["cmd"]["timeout_ms"],
                           "call_id": (cmd["tool_call"]["call_id"] if cmd["tool_call"]
                                       else None) or "",
                           "child_request_id": request["request_id"],
                           "child_conversation_id": request["conversation_id"],
                           "child_deadline_ms": request["deadline_ms"],
                           "token_budget": child["token_budget"] or "",
                           "cost_budget_usd": child["cost_budget_usd"] or ""})
    return [issued, request_output(request)]


def request_output(request: AgentRequest) -> Output:
    return Output(delegation_topic(request["lane"]).name, request["conversation_id"],
                  AGENT_REQUEST, request)


def give_up_at(run: StepRun, policy: Policy) -> int:
    """When a delegation with no answer is given up: its child answers by its own
    deadline, so a grace after that only covers an answer that got lost."""
    return run["cmd"]["deadline_ms"] + policy.delegation_grace_ms


def cancel_running(active: ActiveRequest, reason: str, now_ms: int) -> list[Output]:
    """Cancel every child in flight (no orphan keeps spending); each shows on the parent's
    timeline as ``cancelled``. Their runs count as done from here on."""
    outputs: list[Output] = []
    for run in active["steps"]:
        if is_delegation(run) and run["output"] is None:
            if run["child"]["outcome"] is None:  # not cancelled already (given up)
                outputs += cancel_child(active, run, reason, now_ms)
            run["output"] = f"error: cancelled ({reason})"
            run["child"]["outcome"] = "cancelled"
    return outputs


def cancel_child(active: ActiveRequest, run: StepRun, reason: str, now_ms: int
                 ) -> list[Output]:
    """The cancel of the run's current child (if it was sent and is not waiting for a
    retry: that one already answered), and its ``cancelled`` timeline entry."""
    request = run["child"]["request"]
    if request is None or run["retry_at_ms"] is not None:
        return []
    run["child"]["outcome"] = "cancelled"
    parent = active["request"]
    record: Cancel = {"conversation_id": request["conversation_id"],
                      "request_id": request["request_id"], "reason": reason, "at_ms": now_ms,
                      "by_request_id": parent["request_id"]}
    active["timeline"].append(_cancelled_entry(run["cmd"], request, now_ms))
    return [Output(RESULTS.name, request["conversation_id"], CANCEL, record),
            event("child_cancelled", now_ms, about(parent), step_id=run["cmd"]["step_id"],
                  detail={"child_request_id": request["request_id"],
                          "child_conversation_id": request["conversation_id"],
                          "agent": request["agent"], "reason": reason})]


def _cancelled_entry(cmd: StepCommand, request: AgentRequest, now_ms: int) -> TimelineEntry:
    return {"step_id": cmd["step_id"], "step_type": "agent", "name": request["agent"],
            "status": "cancelled", "worker": CHILD_WORKER, "attempt": cmd["attempt"],
            "issued_at_ms": cmd["issued_at_ms"], "queue_wait_ms": 0.0,
            "run_ms": float(now_ms - cmd["issued_at_ms"]), "result_wait_ms": 0.0,
            "cache_hit": False, "usage": None, "request_id": request["request_id"],
            "conversation_id": request["conversation_id"], "agent_status": None, "depth": 0}


# ---------------------------------------------------------------------------- fan-in

def quorum_met(active: ActiveRequest) -> bool:
    """A fan-out with a quorum has that many good answers."""
    quorum = next((r["child"]["quorum"] for r in active["steps"]
                   if is_delegation(r) and r["child"]["quorum"]), None)
    return quorum is not None and _good(active["steps"]) >= quorum


def quorum_lost(active: ActiveRequest) -> str | None:
    """Why a fan-out's quorum can no longer be met (too many children failed), or None."""
    runs = [r for r in active["steps"] if is_delegation(r)]
    quorum = next((r["child"]["quorum"] for r in runs if r["child"]["quorum"]), None)
    if quorum is None:
        return None
    possible = _good(runs) + sum(r["output"] is None for r in runs)
    if possible >= quorum:
        return None
    failed = sum(r["child"]["outcome"] == "failed" for r in runs)
    return (f"the fan-out needed {quorum} good answers of {len(runs)} sub-agents; "
            f"{failed} failed")


def _good(runs: list[StepRun]) -> int:
    return sum(is_delegation(r) and r["output"] is not None and r["child"]["outcome"] is None
               for r in runs)


def fan_in(runs: list[StepRun]) -> tuple[str, str]:
    """(notes, text) of a plan's fan-out: each good child's answer, named by its agent."""
    answers = [(r["child"]["agent"], (r["output"] or "").strip()) for r in runs
               if is_delegation(r) and r["output"] is not None and r["child"]["outcome"] is None]
    notes = "\n".join(f"- [{name}] {text}" for name, text in answers)
    text = "\n".join(f"{name}: {text}" for name, text in answers)
    return notes, text


def joined(active: ActiveRequest, run: StepRun, res: StepResult) -> None:
    """A child answered well: its completed effects join the parent's saga."""
    if active["failure"] is None:
        active["effects"] += list(res.get("effects") or [])


def timeline_entries(entry: TimelineEntry, res: StepResult) -> list[TimelineEntry]:
    """A delegation's timeline entry names its child, and the child's own timeline follows
    it one level deeper (flat, not nested: a record schema that contains itself is harder
    on every reader, and the depth says whose step each entry is)."""
    child = res.get("answer")
    if child is None:
        return [entry]
    return [{**entry, "name": child["agent"], "request_id": child["request_id"],
             "conversation_id": child["conversation_id"], "agent_status": child["status"]},
            *_deeper(child["timeline"])]


def _deeper(timeline: list[TimelineEntry]) -> list[TimelineEntry]:
    return [{**e, "depth": e.get("depth", 0) + 1} for e in timeline]


def late_result(active: ActiveRequest, res: StepResult) -> None:
    """A cancelled child's answer, after the parent stopped waiting for it: what it spent
    goes into its ``cancelled`` timeline entry (and the request's usage, by the caller),
    its steps after it."""
    child = res.get("answer")
    if child is None:
        return
    timeline = active["timeline"]
    for position, entry in enumerate(timeline):
        if entry["status"] == "cancelled" and entry.get("request_id") == child["request_id"]:
            entry["usage"] = res["usage"]
            entry["agent_status"] = child["status"]
            timeline[position + 1:position + 1] = _deeper(child["timeline"])
            return


# ---------------------------------------------------------------------------- the child's side

def parent_result(answer: AgentAnswer, started_at_ms: int, effects: list[Effect]
                  ) -> Output | None:
    """A sub-agent's answer as the result of its parent's delegation step, keyed by the
    parent's conversation; None for a request that is nobody's child."""
    delegation = answer.get("delegation")
    step_id = answer.get("parent_step_id")
    parent_request = answer.get("parent_request_id")
    if delegation is None or step_id is None or parent_request is None:
        return None
    good = answer["status"] in GOOD
    error: StepError | None = None if good else {
        "error_class": "SubAgentRejected" if answer["status"] == "rejected" else
        "SubAgentFailed",
        "message": f"sub-agent {answer['agent']} ({answer['request_id']}) answered "
                   f"{answer['status']}: {answer['reason'] or 'no reason given'}",
        "retryable": answer["status"] == "failed", "retry_after_ms": None,
        "infrastructure": False}
    text = answer["text"]
    if answer["status"] == "degraded":
        text = f"{text}\n(partial answer: {answer['reason']})".strip()
    record: StepResult = {
        "step_id": step_id, "step_index": 0, "step_type": "agent",
        "attempt": delegation["parent_attempt"], "request_id": parent_request,
        "conversation_id": delegation["parent_conversation_id"],
        "trace_id": answer["trace_id"], "status": "ok" if good else "error",
        "output": text, "error": error, "worker": CHILD_WORKER,
        "issued_at_ms": answer["created_at_ms"], "started_at_ms": started_at_ms,
        "finished_at_ms": answer["answered_at_ms"], "cache_hit": False, "model": None,
        "backend": None, "usage": answer["usage"], "cache": answer["cache"],
        "tool_calls": [], "finish_reason": None, "answer": answer,
        "effects": effects if good else []}
    return Output(RESULTS.name, delegation["parent_conversation_id"], STEP_RESULT, record)


def with_parent_results(outputs: list[Output]) -> list[Output]:
    """Every answer of a sub-agent's request goes back to its parent: whatever answered it
    (a finished run sends its result itself, with its effects; a rejection, an abort or an
    unknown agent get one here), so a parent never waits for a child that was answered."""
    sent = {(o.record["step_id"], o.record["attempt"]) for o in outputs  # type: ignore[typeddict-item]
            if o.schema == STEP_RESULT and o.record.get("step_type") == "agent"}
    final: list[Output] = []
    for out in outputs:
        final.append(out)
        if out.schema != AGENT_ANSWER:
            continue
        answer = out.answer
        assert answer is not None
        delegation = answer.get("delegation")
        if delegation is None or (answer.get("parent_step_id"),
                                  delegation["parent_attempt"]) in sent:
            continue
        result = parent_result(answer, answer["created_at_ms"], [])
        if result is not None:
            final.append(result)
    return final
