"""The native API: requests, their event streams, conversations."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from clawstream.gateway.auth import Caller, CallerDep, GatewayDep
from clawstream.gateway.errors import bad_request, not_found, retry_headers
from clawstream.gateway.models import RequestBody, last_user_text
from clawstream.gateway.service import Accepted, Ask, Gateway, WaitTimeout
from clawstream.processors.keys import tenant_conversation_id

router = APIRouter(prefix="/v1", tags=["native"])
Record = dict[str, Any]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", min_length=1,
                                              max_length=255, pattern=r"^[\x21-\x7e]+$")]
Traceparent = Annotated[str | None, Header(max_length=256)]
"""A caller's W3C trace context: the request joins the caller's trace (an invalid one is
ignored, as W3C asks)."""
RequestId = Annotated[str, Path(pattern=r"^[A-Za-z0-9-]{1,64}$")]
ConversationPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$")]
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def check_text(gw: Gateway, text: str, param: str) -> str:
    if not text.strip():
        raise bad_request("the question is empty", param=param)
    if len(text) > gw.settings.gateway_max_text_chars:
        raise bad_request(f"longer than {gw.settings.gateway_max_text_chars} characters",
                          param=param)
    return text


def links(request_id: str, conversation: str) -> dict[str, str]:
    return {"self": f"/v1/requests/{request_id}",
            "events": f"/v1/requests/{request_id}/events",
            "conversation": f"/v1/conversations/{conversation}"}


def answer_view(answer: Record | None) -> Record | None:
    """The answer as a client sees it (internal ids left out)."""
    if answer is None:
        return None
    return {key: answer.get(key) for key in (
        "status", "text", "reason", "reason_kind", "retry_after_s", "agent_version",
        "answered_at_ms", "usage", "timeline", "cache")}


def request_view(record: Record) -> Record:
    request_id = record["request_id"]
    conversation = record.get("conversation") or ""
    question = (record.get("request") or {}).get("text")
    return {"id": request_id, "object": "clawstream.request", "status": record["status"],
            "agent": record.get("agent"), "conversation": conversation,
            "created_at_ms": record.get("created_at_ms"), "text": question,
            "answer": answer_view(record.get("answer")),
            "links": links(request_id, conversation)}


def event_view(event: Record) -> Record:
    return {"id": event["event_id"], "type": event["event_type"], "at_ms": event["at_ms"],
            "step_id": event.get("step_id"), "worker": event.get("worker"),
            "agent_version": event.get("agent_version"), "detail": event.get("detail") or {}}


def delta_view(delta: Record) -> Record:
    """A model step's new output (requests with the ``stream`` option): follow one
    ``attempt`` of a step, in ``seq`` order; the answer is the record."""
    return {key: delta.get(key) for key in (
        "step_id", "step_index", "attempt", "seq", "text", "tool_calls", "finish_reason",
        "at_ms")}


def delta_id(delta: Record) -> str:
    return f"delta-{delta['step_id']}-{delta['attempt']}-{delta['seq']}"


def sse(data: str, event: str | None = None, event_id: str | None = None) -> str:
    head = (f"id: {event_id}\n" if event_id else "") + (f"event: {event}\n" if event else "")
    return head + "".join(f"data: {line}\n" for line in data.split("\n")) + "\n"


async def owned(gw: Gateway, caller: Caller, request_id: str) -> Record:
    """The caller's request, or 404 (another tenant's request is not there for them)."""
    record = await gw.store.get(request_id)
    if record is None or record["tenant_id"] != caller.tenant_id:
        raise not_found(f"no request {request_id}", param="request_id")
    return record


@router.post("/requests", status_code=202)
async def create_request(body: RequestBody, gw: GatewayDep, caller: CallerDep,
                         idempotency_key: IdempotencyKey = None,
                         traceparent: Traceparent = None) -> JSONResponse:
    """Ask an agent; answers at once with the request id and where to follow it."""
    if body.text is not None:
        text = check_text(gw, body.text, "text")
    else:
        assert body.messages is not None
        try:
            text, index = last_user_text(body.messages)
        except ValueError:
            raise bad_request("no user message", param="messages") from None
        check_text(gw, text, f"messages[{index}].content")
    if not gw.has_agent(body.agent):
        raise not_found(f"unknown agent {body.agent!r}", code="unknown_agent", param="agent")
    accepted = await gw.submit(Ask(
        tenant_id=caller.tenant_id, user_id=body.user or caller.user_id, agent=body.agent,
        text=text, conversation=body.conversation, lane=body.lane,
        options={str(k): v for k, v in body.options.items()}, deadline_s=body.deadline_s,
        idempotency_key=idempotency_key, traceparent=traceparent), watch=False)
    return JSONResponse(_accepted_body(accepted), status_code=202, headers={
        "Location": f"/v1/requests/{accepted.request_id}",
        **({"Idempotent-Replayed": "true"} if accepted.replayed else {})})


def _accepted_body(accepted: Accepted) -> Record:
    status = accepted.answer["status"] if accepted.answer else "accepted"
    return {"id": accepted.request_id, "object": "clawstream.request", "status": status,
            "agent": accepted.request.get("agent"), "conversation": accepted.conversation,
            "created_at_ms": accepted.request.get("created_at_ms"),
            "answer": answer_view(accepted.answer),
            "links": links(accepted.request_id, accepted.conversation)}


@router.get("/requests/{request_id}")
async def get_request(request_id: RequestId, gw: GatewayDep, caller: CallerDep,
                      wait: Annotated[float, Query(ge=0, le=600)] = 0.0) -> JSONResponse:
    """Status and answer; ``?wait=S`` holds the call until the answer or S seconds."""
    record = await owned(gw, caller, request_id)
    if wait > 0 and record["answer"] is None:
        accepted = await gw.watch_request(record)
        try:
            record["answer"] = await gw.wait_answer(
                accepted, min(wait, gw.settings.gateway_max_poll_wait_s))
        except WaitTimeout:
            pass
        finally:
            gw.release(accepted)
        if record["answer"] is not None:
            record["status"] = record["answer"]["status"]
    answer = record["answer"] or {}
    headers = retry_headers(answer["retry_after_s"]) if answer.get("retry_after_s") else {}
    return JSONResponse(request_view(record), headers=headers)


@router.get("/requests/{request_id}/events", response_class=StreamingResponse)
async def request_events(request_id: RequestId, request: Request, gw: GatewayDep,
                         caller: CallerDep,
                         last_event_id: Annotated[str | None, Header(max_length=64)] = None
                         ) -> StreamingResponse:
    """Server-sent events: the request's timeline so far, then as it happens (with
    ``event: delta`` for its model steps' output when it was sent with the ``stream``
    option), then ``event: answer``. ``Last-Event-ID`` resumes after that event."""
    record = await owned(gw, caller, request_id)
    accepted = await gw.watch_request(record)
    try:
        history = await gw.store.events(request_id)
    except BaseException:
        gw.release(accepted)
        raise
    return StreamingResponse(_event_stream(gw, accepted, history, last_event_id),
                             media_type="text/event-stream", headers=SSE_HEADERS,
                             background=gw.releaser(accepted))


async def _event_stream(gw: Gateway, accepted: Accepted, history: list[Record],
                        last_event_id: str | None) -> AsyncIterator[str]:
    seen: set[str] = set()
    try:
        if last_event_id and any(e["event_id"] == last_event_id for e in history):
            skip = [e["event_id"] for e in history]
            seen.update(skip[: skip.index(last_event_id) + 1])
        for event in history:
            if event["event_id"] not in seen:
                seen.add(event["event_id"])
                yield sse(json.dumps(event_view(event)), event["event_type"], event["event_id"])
        timeout = max(gw.deadline(accepted), 1.0)
        try:
            async for kind, record in gw.timeline(accepted, timeout,
                                                  tick_s=gw.settings.gateway_keepalive_s):
                if kind == "tick":
                    yield ": keep-alive\n\n"
                elif kind == "event" and record["event_id"] not in seen:
                    seen.add(record["event_id"])
                    yield sse(json.dumps(event_view(record)), record["event_type"],
                              record["event_id"])
                elif kind == "delta":
                    yield sse(json.dumps(delta_view(record)), "delta", delta_id(record))
                elif kind == "answer":
                    yield sse(json.dumps(answer_view(record)), "answer",
                              f"answer-{accepted.request_id}")
        except WaitTimeout:
            yield sse(json.dumps({"request_id": accepted.request_id,
                                  "message": "deadline passed; the request still finishes"}),
                      "timeout")
    finally:
        gw.release(accepted)


@router.get("/conversations/{conversation}")
async def get_conversation(conversation: ConversationPath, gw: GatewayDep, caller: CallerDep
                           ) -> JSONResponse:
    """The conversation's requests, oldest first, with their answers."""
    ids = await gw.store.conversation(tenant_conversation_id(caller.tenant_id, conversation))
    records = [r for r in await gw.store.get_many(ids) if r["tenant_id"] == caller.tenant_id]
    if not records:
        raise not_found(f"no conversation {conversation}", param="conversation")
    return JSONResponse({"id": conversation, "object": "clawstream.conversation",
                         "requests": [request_view(r) for r in records]})
