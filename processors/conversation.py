"""The coordinator's decisions as pure functions: (state, event) -> (state, outputs).

Kept free of Kafka and Faust so every rule can be unit-tested, and so that reprocessing a
redelivered event after a crash is provably harmless: a request already seen only re-issues
its pending step (workers tolerate repeats), a result for a step that is not pending is
ignored, so one request yields one answer.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from processors.agents import AgentSpec, get_agent
from processors.keys import step_key
from schemas.names import AGENT_ANSWER, AGENT_EVENT, STEP_COMMAND
from streams.topics import ANSWERS, EVENTS, INFERENCE_REQUESTS, TOOL_REQUESTS

Record = dict[str, Any]


@dataclass
class Output:
    topic: str
    key: str
    schema: str
    record: Record


@dataclass
class Decision:
    conversation: Record
    dedup: Record | None
    outputs: list[Output] = field(default_factory=list)


def empty_conversation() -> Record:
    return {"exchanges": [], "active": None, "waiting": []}


def _event(kind: str, at_ms: int, req: Record, **extra: Any) -> Output:
    detail = {k: str(v) for k, v in extra.pop("detail", {}).items()}
    record = {
        "event_id": uuid.uuid4().hex,
        "event_type": kind,
        "at_ms": at_ms,
        "request_id": req.get("request_id"),
        "conversation_id": req.get("conversation_id"),
        "trace_id": req.get("trace_id"),
        "step_id": extra.get("step_id"),
        "agent": req.get("agent"),
        "agent_version": extra.get("agent_version"),
        "worker": extra.get("worker"),
        "detail": detail,
    }
    return Output(EVENTS.name, req["conversation_id"], AGENT_EVENT, record)


def _usage() -> Record:
    return {"prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0,
            "saved_tokens": 0, "saved_cost_usd": 0.0}


def build_messages(agent: AgentSpec, conv: Record, req: Record, notes: str | None
                   ) -> list[Record]:
    """System prompt, the last N exchanges, then the new question (with retrieved notes)."""
    messages = [{"role": "system", "content": agent.system_prompt}]
    for ex in conv["exchanges"][-agent.context_exchanges:]:
        messages.append({"role": "user", "content": ex["user"]})
        messages.append({"role": "assistant", "content": ex["assistant"]})
    question = req["text"]
    if notes:
        question = f"Notes:\n{notes}\n\nQuestion: {question}"
    messages.append({"role": "user", "content": question})
    return messages


def _command(req: Record, agent: AgentSpec, index: int, step_type: str, now_ms: int,
             timeout_ms: int, model_call: Record | None, tool_call: Record | None) -> Record:
    call = model_call if step_type == "model" else tool_call
    return {
        "step_id": step_key(step_type, req["conversation_id"],
                            {"request_id": req["request_id"], "index": index, "call": call}),
        "step_index": index,
        "step_type": step_type,
        "attempt": 1,
        "request_id": req["request_id"],
        "conversation_id": req["conversation_id"],
        "tenant_id": req["tenant_id"],
        "trace_id": req["trace_id"],
        "lane": req["lane"],
        "issued_at_ms": now_ms,
        "timeout_ms": timeout_ms,
        "deadline_ms": req["deadline_ms"],
        "model_call": model_call,
        "tool_call": tool_call,
    }


def _issue(active: Record, cmd: Record, agent: AgentSpec, now_ms: int) -> list[Output]:
    active["pending"] = cmd
    topic = INFERENCE_REQUESTS if cmd["step_type"] == "model" else TOOL_REQUESTS
    name = cmd["tool_call"]["name"] if cmd["tool_call"] else cmd["model_call"]["model"]
    return [
        _event("step_issued", now_ms, active["request"], step_id=cmd["step_id"],
               agent_version=agent.version,
               detail={"step_type": cmd["step_type"], "name": name,
                       "attempt": cmd["attempt"]}),
        Output(topic.name, cmd["conversation_id"], STEP_COMMAND, cmd),
    ]


def _model_step(conv: Record, active: Record, agent: AgentSpec, now_ms: int,
                timeout_ms: int) -> Record:
    req = active["request"]
    call = {
        "model": "default",
        "prompt_version": agent.prompt_version,
        "messages": build_messages(agent, conv, req, active.get("notes")),
        "max_tokens": agent.max_tokens,
        "temperature": agent.temperature,
    }
    return _command(req, agent, active["step_index"], "model", now_ms, timeout_ms, call, None)


def _first_step(conv: Record, active: Record, agent: AgentSpec, now_ms: int,
                timeout_ms: int) -> Record:
    req = active["request"]
    if agent.uses_retrieval:
        args = json.dumps({"query": req["text"], "k": 2}, sort_keys=True)
        tool = {"name": "retrieve", "version": "1", "arguments_json": args, "mutating": False}
        return _command(req, agent, 0, "tool", now_ms, timeout_ms, None, tool)
    return _model_step(conv, active, agent, now_ms, timeout_ms)


def _start(conv: Record, req: Record, agent: AgentSpec, now_ms: int,
           timeout_ms: int) -> list[Output]:
    active = {"request": req, "step_index": 0, "pending": None, "notes": None,
              "timeline": [], "usage": _usage()}
    conv["active"] = active
    return _issue(active, _first_step(conv, active, agent, now_ms, timeout_ms), agent, now_ms)


def _answer(conv: Record, status: str, text: str, reason: str | None, now_ms: int,
            agent_version: str) -> Output:
    active = conv["active"]
    req = active["request"]
    record = {
        "request_id": req["request_id"],
        "idempotency_key": req["idempotency_key"],
        "conversation_id": req["conversation_id"],
        "tenant_id": req["tenant_id"],
        "trace_id": req["trace_id"],
        "agent": req["agent"],
        "agent_version": agent_version,
        "status": status,
        "text": text,
        "reason": reason,
        "created_at_ms": req["created_at_ms"],
        "answered_at_ms": now_ms,
        "usage": active["usage"],
        "timeline": active["timeline"],
    }
    return Output(ANSWERS.name, req["conversation_id"], AGENT_ANSWER, record)


def _reject_unknown_agent(req: Record, now_ms: int) -> list[Output]:
    conv = {"active": {"request": req, "usage": _usage(), "timeline": []}}
    reason = f"unknown agent {req['agent']!r}"
    return [_answer(conv, "rejected", "", reason, now_ms, "none"),
            _event("request_rejected", now_ms, req, detail={"reason": reason})]


def on_request(conv: Record | None, dedup: Record | None, req: Record, now_ms: int,
               timeout_ms: int) -> Decision:
    conv = conv or empty_conversation()
    active = conv["active"]
    if dedup is not None:
        outputs = [_event("request_duplicate", now_ms, req,
                          detail={"first_request_id": dedup["request_id"]})]
        # A redelivery after a crash: re-issue the pending step, in case it never left.
        if active and active["request"]["request_id"] == dedup["request_id"]:
            outputs.append(Output(
                INFERENCE_REQUESTS.name if active["pending"]["step_type"] == "model"
                else TOOL_REQUESTS.name,
                req["conversation_id"], STEP_COMMAND, active["pending"]))
        return Decision(conv, dedup, outputs)
    agent = get_agent(req["agent"])
    new_dedup = {"request_id": req["request_id"], "status": "in_progress"}
    if agent is None:
        return Decision(conv, {**new_dedup, "status": "answered"},
                        _reject_unknown_agent(req, now_ms))
    outputs = [_event("request_received", now_ms, req, agent_version=agent.version)]
    if active is None:
        outputs += _start(conv, req, agent, now_ms, timeout_ms)
    else:
        conv["waiting"].append(req)
    return Decision(conv, new_dedup, outputs)


def _timeline_entry(cmd: Record, res: Record, now_ms: int) -> Record:
    name = cmd["tool_call"]["name"] if cmd["tool_call"] else (res.get("model") or "model")
    return {
        "step_id": res["step_id"],
        "step_type": res["step_type"],
        "name": name,
        "status": res["status"],
        "worker": res["worker"],
        "attempt": res["attempt"],
        "issued_at_ms": cmd["issued_at_ms"],
        "queue_wait_ms": float(res["started_at_ms"] - cmd["issued_at_ms"]),
        "run_ms": float(res["finished_at_ms"] - res["started_at_ms"]),
        "result_wait_ms": float(now_ms - res["finished_at_ms"]),
        "cache_hit": res["cache_hit"],
    }


def on_result(conv: Record | None, res: Record, now_ms: int, timeout_ms: int
              ) -> tuple[Record | None, list[Output], Record | None]:
    """Returns (conversation, outputs, the request this result answered, or None)."""
    active = conv["active"] if conv else None
    pending = active["pending"] if active else None
    if conv is None or active is None or pending is None or (
            pending["step_id"], pending["attempt"]) != (res["step_id"], res["attempt"]):
        req = active["request"] if active else res
        return conv, [_event("step_ignored", now_ms, {**req, "request_id": res["request_id"]},
                             step_id=res["step_id"], worker=res["worker"],
                             detail={"reason": "not the pending step"})], None
    agent = get_agent(active["request"]["agent"])
    assert agent is not None  # checked when the request started
    active["timeline"].append(_timeline_entry(pending, res, now_ms))
    for k in ("prompt_tokens", "completion_tokens", "saved_tokens"):
        active["usage"][k] += res["usage"][k]
    for k in ("cost_usd", "saved_cost_usd"):
        active["usage"][k] += res["usage"][k]
    outputs = [_event("step_completed", now_ms, active["request"], step_id=res["step_id"],
                      worker=res["worker"], agent_version=agent.version,
                      detail={"status": res["status"], "attempt": res["attempt"]})]
    if res["status"] == "error":
        err = res["error"] or {}
        reason = f"step {pending['step_type']} failed: {err.get('message', 'unknown error')}"
        return _finish(conv, agent, "failed", "", reason, now_ms, timeout_ms, outputs)
    if res["step_type"] == "tool":
        active["notes"] = _notes(res["output"])
        active["step_index"] += 1
        cmd = _model_step(conv, active, agent, now_ms, timeout_ms)
        return conv, outputs + _issue(active, cmd, agent, now_ms), None
    return _finish(conv, agent, "ok", res["output"].strip(), None, now_ms, timeout_ms, outputs)


def _notes(tool_output: str) -> str:
    try:
        hits = json.loads(tool_output)
        return "\n".join(f"- {h['text']}" for h in hits)
    except (ValueError, KeyError, TypeError):
        return tool_output


def _finish(conv: Record, agent: AgentSpec, status: str, text: str, reason: str | None,
            now_ms: int, timeout_ms: int, outputs: list[Output]
            ) -> tuple[Record, list[Output], Record | None]:
    req = conv["active"]["request"]
    outputs.append(_answer(conv, status, text, reason, now_ms, agent.version))
    outputs.append(_event("answer_emitted", now_ms, req, agent_version=agent.version,
                          detail={"status": status}))
    if status == "ok":
        conv["exchanges"].append({"request_id": req["request_id"], "user": req["text"],
                                  "assistant": text})
    conv["active"] = None
    if conv["waiting"]:
        nxt = conv["waiting"].pop(0)
        nxt_agent = get_agent(nxt["agent"])
        if nxt_agent is not None:
            outputs += _start(conv, nxt, nxt_agent, now_ms, timeout_ms)
    return conv, outputs, req
