"""Admitting a request, before it runs: its key's history, its content, the refusals.

Pure helpers of the coordinator's rules (:mod:`clawstream.processors.conversation`): a key
seen before is a duplicate, a redrive or a conflict; a new request is validated and then
asked about at the entrance limits; a refused one is answered ``rejected`` and recorded so
a redelivery is not answered twice.
"""

from __future__ import annotations

from clawstream.processors.keys import content_hash
from clawstream.processors.policy import Policy
from clawstream.processors.records import Output, about, answer, event
from clawstream.processors.state import DedupEntry
from clawstream.processors.validation import Rejection, request_problem
from clawstream.schemas.records import AgentRequest

MAX_CONFLICTS_KEPT = 20


def request_content(req: AgentRequest) -> str:
    """What the request asks, as a hash: a client's retry under its idempotency key has the
    same; a redrive too (its mark is left out)."""
    options = {k: v for k, v in req["options"].items() if k != "redrive_of"}
    return content_hash({"agent": req["agent"], "text": req["text"], "lane": req["lane"],
                         "user_id": req["user_id"], "options": options,
                         "messages": req["messages"], "tools": req["tools"]})


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


def needs_gate(dedup: DedupEntry | None, req: AgentRequest, policy: Policy) -> bool:
    """Whether the entrance limits must be asked about ``req`` (a new, valid request)."""
    return dedup is None and request_problem(req, policy) is None


def refusal(req: AgentRequest, policy: Policy, rejection: Rejection | None
            ) -> Rejection | None:
    """Why a new request is refused: invalid, or over a limit; None if it may run."""
    problem = request_problem(req, policy)
    if problem is not None:
        return Rejection("invalid_request", f"invalid request: {problem}", 0.0)
    return rejection


def conflict(dedup: DedupEntry, req: AgentRequest) -> Rejection | None:
    """The same key for another request (other content under another request id)."""
    content = dedup.get("content")
    if (content is not None and content != request_content(req)
            and req["request_id"] != dedup["request_id"]):
        return Rejection("idempotency_conflict",
                         f"idempotency key {req['idempotency_key']!r} was used for a "
                         f"different request ({dedup['request_id']}); use a new key for a new "
                         "request", 0.0)
    return None


def with_conflict(dedup: DedupEntry, req: AgentRequest) -> DedupEntry:
    return {**dedup, "conflicts": [*dedup.get("conflicts", []), req["request_id"]]
            [-MAX_CONFLICTS_KEPT:]}


def rejection_outputs(req: AgentRequest, rejection: Rejection, now_ms: int) -> list[Output]:
    """A ``rejected`` answer with the reason and retry hint, and its audit event."""
    return [answer(req, "rejected", "", rejection.reason, now_ms, "none",
                   reason_kind=rejection.kind, retry_after_s=rejection.retry_after_s or None),
            event("request_rejected", now_ms, about(req),
                  detail={"reason": rejection.reason, "kind": rejection.kind,
                          "retry_after_s": f"{rejection.retry_after_s:.3f}"})]


def rejected_entry(req: AgentRequest) -> DedupEntry:
    return {"request_id": req["request_id"], "status": "answered",
            "answer_status": "rejected", "redriven": [], "content": request_content(req)}
