"""The OpenAI-compatible edge: ``/v1/chat/completions`` and ``/v1/models``.

``model: "agent/<name>"`` runs a clawstream agent (its tools run server-side) and returns
its final answer as the assistant message. Streaming sends OpenAI's
``chat.completion.chunk`` events: the role chunk as soon as the coordinator took the
request (a rejection still becomes a real 429 before any chunk), the answer's text when
it is there, then the finish chunk, the usage chunk (``stream_options.include_usage``) and
``[DONE]``. Any other known ``model`` (a pool, or a pool's model id) is a governed
pass-through call: the client's messages and tools go through the event flow as one model
step (lanes, limits, budgets, caches, retries, cost) and the model's tool calls come back
unchanged (``finish_reason: "tool_calls"``, ``message.tool_calls`` or ``delta.tool_calls``).
Token deltas of the model step will feed :func:`_content_chunks` instead of the final text,
in the same shapes.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import TypeAdapter

from clawstream.gateway.auth import CallerDep, GatewayDep
from clawstream.gateway.errors import ApiError, bad_request, not_found
from clawstream.gateway.models import (
    ChatCompletionBody,
    ConversationName,
    last_user_text,
    question_text,
    record_messages,
    record_tools,
)
from clawstream.gateway.native import SSE_HEADERS, IdempotencyKey, check_text
from clawstream.gateway.service import (
    Accepted,
    Ask,
    Gateway,
    WaitTimeout,
    answer_error,
    deadline_error,
)
from clawstream.processors.agents import PASSTHROUGH_PREFIX
from clawstream.processors.keys import short_hash

router = APIRouter(prefix="/v1", tags=["openai"])
Record = dict[str, Any]
AGENT_PREFIX = "agent/"
CHUNK_CHARS = 64
"""The final text is sent in pieces of about this size (until model deltas stream)."""
CREATED = 1_700_000_000
_CONVERSATION: TypeAdapter[str] = TypeAdapter(ConversationName)


def _target(gw: Gateway, model: str) -> tuple[str, bool]:
    """The agent a ``model`` names, and whether it is a governed pass-through model call:
    ``agent/<name>`` is a clawstream agent; a pool or a pool's model id is one model step
    over the client's chat on that pool (the ``model/<pool>`` pass-through agent)."""
    if model.startswith(AGENT_PREFIX) and gw.has_agent(model.removeprefix(AGENT_PREFIX)):
        return model.removeprefix(AGENT_PREFIX), False
    pool = gw.model_pools().get(model)
    if pool is not None:
        return PASSTHROUGH_PREFIX + pool, True
    known = [AGENT_PREFIX + a for a in gw.agent_names()] + sorted(gw.model_pools())
    raise not_found(f"the model {model!r} does not exist: use one of {', '.join(known)}",
                    code="model_not_found", param="model")


def _model_card(model_id: str) -> Record:
    return {"id": model_id, "object": "model", "created": CREATED, "owned_by": "clawstream"}


def _model_ids(gw: Gateway) -> list[str]:
    return [AGENT_PREFIX + name for name in gw.agent_names()] + sorted(gw.model_pools())


@router.get("/models")
async def list_models(gw: GatewayDep, _caller: CallerDep) -> JSONResponse:
    """The agents (``agent/<name>``) and the pools and model ids of governed model calls."""
    return JSONResponse({"object": "list", "data": [_model_card(m) for m in _model_ids(gw)]})


@router.get("/models/{model:path}")
async def get_model(model: str, gw: GatewayDep, _caller: CallerDep) -> JSONResponse:
    _target(gw, model)
    return JSONResponse(_model_card(model))


def _conversation(body: ChatCompletionBody, header: str | None) -> str | None:
    """The conversation: a header, else ``prompt_cache_key`` (hashed when it is not a
    valid name), else none (a new conversation per call)."""
    if header is not None:
        return header
    key = body.prompt_cache_key
    if key is None:
        return None
    try:
        return str(_CONVERSATION.validate_python(key))
    except ValueError:
        return f"pck-{short_hash(key)}"


def _usage(answer: Record) -> Record:
    usage = answer.get("usage") or {}
    prompt, completion = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def _headers(accepted: Accepted) -> dict[str, str]:
    return {"X-Request-Id": accepted.request_id,
            "X-Clawstream-Conversation": accepted.conversation}


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionBody, gw: GatewayDep, caller: CallerDep,
    idempotency_key: IdempotencyKey = None,
    x_clawstream_conversation: Annotated[
        str | None, Header(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$")] = None,
    x_clawstream_deadline_s: Annotated[float | None, Header(gt=0, le=86_400)] = None,
) -> JSONResponse | StreamingResponse:
    """Run ``agent/<name>`` on the last user message, or make a governed model call (any
    other known ``model``: the client's messages and tools, one model step, tool calls
    returned as they are). Headers: ``Idempotency-Key``, ``X-Clawstream-Conversation``
    (else ``prompt_cache_key``), ``X-Clawstream-User`` (else ``user``),
    ``X-Clawstream-Deadline-S`` (else the lane's default)."""
    agent, passthrough = _target(gw, body.model)
    if passthrough:
        text = check_text(gw, question_text(body.messages), "messages")
        for index, m in enumerate(body.messages):
            if len(m.text()) > gw.settings.gateway_max_text_chars:
                raise bad_request(f"longer than {gw.settings.gateway_max_text_chars} "
                                  "characters", param=f"messages[{index}].content")
        messages, tools = record_messages(body.messages), record_tools(body.tools)
        limit = body.max_completion_tokens or body.max_tokens
        options = {"max_tokens": str(limit)} if limit else {}
    else:
        try:
            text, index = last_user_text(body.messages)
        except ValueError:
            raise bad_request("no user message", param="messages") from None
        check_text(gw, text, f"messages[{index}].content")
        messages, tools, options = [], [], {}
    accepted = await gw.submit(Ask(
        tenant_id=caller.tenant_id, user_id=body.user or caller.user_id, agent=agent,
        text=text, conversation=_conversation(body, x_clawstream_conversation),
        deadline_s=x_clawstream_deadline_s, idempotency_key=idempotency_key,
        options=options, messages=messages, tools=tools))
    try:
        if body.stream:
            return await _start_stream(gw, accepted, body)
        try:
            answer = await gw.wait_answer(accepted, gw.deadline(accepted))
        except WaitTimeout:
            raise deadline_error(accepted.request_id) from None
    finally:
        if not body.stream:
            gw.release(accepted)
    error = answer_error(answer, accepted.request_id)
    if error is not None:
        error.headers.update(_headers(accepted))
        raise error
    return JSONResponse(_completion(accepted, body.model, answer), headers=_headers(accepted))


def _tool_calls(answer: Record) -> list[Record]:
    """The model's tool calls, in OpenAI's shape, unchanged (ids, names, arguments)."""
    return [{"id": c["id"], "type": "function",
             "function": {"name": c["name"], "arguments": c["arguments_json"]}}
            for c in answer.get("tool_calls") or ()]


def _finish_reason(answer: Record) -> str:
    return "tool_calls" if answer.get("tool_calls") else "stop"


def _completion(accepted: Accepted, model: str, answer: Record) -> Record:
    message: Record = {"role": "assistant", "content": answer["text"], "refusal": None}
    calls = _tool_calls(answer)
    if calls:
        message.update(content=answer["text"] or None, tool_calls=calls)
    return {"id": f"chatcmpl-{accepted.request_id}", "object": "chat.completion",
            "created": int(accepted.request.get("created_at_ms", 0)) // 1000, "model": model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "finish_reason": _finish_reason(answer),
                         "logprobs": None, "message": message}],
            "usage": _usage(answer)}


async def _start_stream(gw: Gateway, accepted: Accepted, body: ChatCompletionBody
                        ) -> StreamingResponse:
    """Hold the response until the coordinator took the request or answered it, so a
    rejection is still an HTTP error; then stream."""
    timeline = gw.timeline(accepted, gw.deadline(accepted))
    first: tuple[str, Record] | None = None
    try:
        async for kind, record in timeline:
            if kind == "answer" or record.get("event_type") in (
                    "request_received", "request_duplicate"):
                first = (kind, record)
                break
    except WaitTimeout:
        gw.release(accepted)
        raise deadline_error(accepted.request_id) from None
    except BaseException:
        gw.release(accepted)
        raise
    if first is not None and first[0] == "answer":
        error = answer_error(first[1], accepted.request_id)
        if error is not None:
            gw.release(accepted)
            error.headers.update(_headers(accepted))
            raise error
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return StreamingResponse(
        _chunks(gw, accepted, body.model, timeline, first, include_usage),
        media_type="text/event-stream", headers={**SSE_HEADERS, **_headers(accepted)},
        background=gw.releaser(accepted))


def _chunk(accepted: Accepted, model: str, delta: Record, finish: str | None,
           include_usage: bool) -> str:
    chunk: Record = {"id": f"chatcmpl-{accepted.request_id}", "object": "chat.completion.chunk",
                     "created": int(accepted.request.get("created_at_ms", 0)) // 1000,
                     "model": model, "system_fingerprint": None,
                     "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                  "finish_reason": finish}]}
    if include_usage:
        chunk["usage"] = None
    return f"data: {json.dumps(chunk)}\n\n"


def _content_chunks(text: str) -> list[str]:
    """The answer's text in a few pieces, cut after whitespace (joined, they are the text)."""
    pieces, current = [], ""
    for token in re.findall(r"\S*\s*", text):
        current += token
        if len(current) >= CHUNK_CHARS:
            pieces.append(current)
            current = ""
    if current or not pieces:
        pieces.append(current)
    return pieces


async def _chunks(gw: Gateway, accepted: Accepted, model: str,
                  timeline: AsyncIterator[tuple[str, Record]],
                  first: tuple[str, Record] | None, include_usage: bool) -> AsyncIterator[str]:
    try:
        yield _chunk(accepted, model, {"role": "assistant", "content": ""}, None, include_usage)
        answer = first[1] if first is not None and first[0] == "answer" else None
        try:
            while answer is None:
                kind, record = await anext(timeline)
                if kind == "answer":
                    answer = record
        except (WaitTimeout, StopAsyncIteration):
            yield _error_event(deadline_error(accepted.request_id))
            return
        error = answer_error(answer, accepted.request_id)
        if error is not None:
            yield _error_event(error)
            return
        calls = _tool_calls(answer)
        if answer["text"] or not calls:
            for piece in _content_chunks(answer["text"]):
                yield _chunk(accepted, model, {"content": piece}, None, include_usage)
        if calls:
            yield _chunk(accepted, model, {"tool_calls": [
                {"index": i, **call} for i, call in enumerate(calls)]}, None, include_usage)
        yield _chunk(accepted, model, {}, _finish_reason(answer), include_usage)
        if include_usage:
            usage = {"id": f"chatcmpl-{accepted.request_id}", "object": "chat.completion.chunk",
                     "created": int(accepted.request.get("created_at_ms", 0)) // 1000,
                     "model": model, "system_fingerprint": None, "choices": [],
                     "usage": _usage(answer)}
            yield f"data: {json.dumps(usage)}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        gw.release(accepted)


def _error_event(error: ApiError) -> str:
    """An error after the stream started: OpenAI clients raise on a chunk with ``error``."""
    return f"data: {json.dumps(error.body())}\n\n"
