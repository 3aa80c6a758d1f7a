"""The OpenAI-compatible edge: ``/v1/chat/completions`` and ``/v1/models``.

``model: "agent/<name>"`` runs a clawstream agent (its tools run server-side) and returns
its final answer as the assistant message. Streaming sends OpenAI's
``chat.completion.chunk`` events: the role chunk as soon as the coordinator took the
request (a rejection still becomes a real 429 before any chunk), the model's output token
by token as the dispatcher publishes its deltas (``agent.deltas``; for an agent, its final
model turn), what the answer has beyond them, then the finish chunk, the usage chunk
(``stream_options.include_usage``) and ``[DONE]``. Any other known ``model`` (a pool, or a
pool's model id) is a governed pass-through call: the client's messages, tools and sampling
go through the event flow as one model step (lanes, limits, budgets, caches, retries, cost)
and the model's tool calls come back
unchanged (``finish_reason: "tool_calls"``, ``message.tool_calls`` or ``delta.tool_calls``,
streamed as OpenAI streams them: id and name first, then the arguments in pieces).
"""

from __future__ import annotations

import json
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
    OverCap,
    last_user_text,
    question_text,
    record_messages,
    record_tools,
)
from clawstream.gateway.native import SSE_HEADERS, IdempotencyKey, Traceparent, check_text
from clawstream.gateway.service import (
    STREAM_OPTION,
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
    traceparent: Traceparent = None,
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
        try:
            options = body.sampling_options(gw.settings.model_max_tokens)
        except OverCap as exc:
            raise bad_request(f"{exc.field}: {exc}", param=exc.field) from None
    else:
        try:
            text, index = last_user_text(body.messages)
        except ValueError:
            raise bad_request("no user message", param="messages") from None
        check_text(gw, text, f"messages[{index}].content")
        messages, tools, options = [], [], {}
    if body.stream:
        options[STREAM_OPTION] = "true"
    accepted = await gw.submit(Ask(
        tenant_id=caller.tenant_id, user_id=body.user or caller.user_id, agent=agent,
        text=text, conversation=_conversation(body, x_clawstream_conversation),
        deadline_s=x_clawstream_deadline_s, idempotency_key=idempotency_key,
        options=options, messages=messages, tools=tools, traceparent=traceparent))
    try:
        if body.stream:
            return await _start_stream(gw, accepted, body, passthrough)
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


async def _start_stream(gw: Gateway, accepted: Accepted, body: ChatCompletionBody,
                        passthrough: bool) -> StreamingResponse:
    """Hold the response until the coordinator took the request or answered it, so a
    rejection is still an HTTP error; then stream."""
    timeline = gw.timeline(accepted, gw.deadline(accepted))
    first: tuple[str, Record] | None = None
    try:
        async for kind, record in timeline:
            if kind in ("answer", "delta") or record.get("event_type") in (
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
        _chunks(gw, accepted, body.model, timeline, first, include_usage, passthrough),
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


ARGUMENT_PIECE_CHARS = 32
"""A tool call's arguments are streamed in pieces of this size, as OpenAI streams them."""


def tool_call_deltas(calls: list[Record], first_index: int = 0) -> list[Record]:
    """Tool calls as OpenAI streams them: per call, a delta with its index, id, type and
    name (arguments empty), then its arguments in pieces."""
    deltas: list[Record] = []
    for offset, call in enumerate(calls):
        index = first_index + offset
        deltas.append({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                       "function": {"name": call["name"], "arguments": ""}}]})
        arguments = call["arguments_json"]
        for at in range(0, len(arguments), ARGUMENT_PIECE_CHARS):
            deltas.append({"tool_calls": [{"index": index, "function": {
                "arguments": arguments[at:at + ARGUMENT_PIECE_CHARS]}}]})
    return deltas


class DeltaFollower:
    """Which model-step deltas a stream shows, as OpenAI chunk deltas.

    It follows one step attempt at a time, in order (``seq``): deltas of another attempt
    (a retry, a duplicate worker) are not shown while one is followed, a repeat is dropped,
    and a gap (a delta lost, best-effort transport) stops the attempt's deltas; the answer
    then completes the text (:meth:`rest`). When the followed attempt ends, the next step
    may be followed: in an agent, a model turn that ended in tool calls is a decision (its
    calls run server-side, its text is not the answer), and the turn after it is followed. For a
    governed call (``passthrough``) the model's tool calls are the answer, and are shown.
    """

    def __init__(self, passthrough: bool) -> None:
        self.passthrough = passthrough
        self.sent = ""
        self.calls_sent = 0
        self._current: tuple[str, int] | None = None
        self._next_seq = 0
        self._broken = False
        self._ended: set[str] = set()

    def take(self, delta: Record) -> list[Record]:
        key = (str(delta["step_id"]), int(delta["attempt"]))
        if self._current is None:
            if key[0] in self._ended or delta["seq"] != 0:
                return []
            self._current, self._next_seq, self._broken = key, 0, False
        if key != self._current or self._broken:
            return []
        if delta["seq"] < self._next_seq:  # a repeat (redelivered, or replayed on watch)
            return []
        if delta["seq"] > self._next_seq:
            self._broken = True
            return []
        self._next_seq += 1
        calls = list(delta.get("tool_calls") or ())
        out: list[Record] = []
        if delta["text"] and (self.passthrough or not calls):
            self.sent += delta["text"]
            out.append({"content": delta["text"]})
        if delta.get("finish_reason") is not None:
            self._ended.add(key[0])
            self._current = None
            if calls and self.passthrough:
                out += tool_call_deltas(calls, self.calls_sent)
                self.calls_sent += len(calls)
        return out

    def rest(self, answer: Record) -> list[Record]:
        """What the answer has that the deltas did not show: the rest of its text (all of
        it after a prompt-cache hit, which streams nothing), and for a governed call its
        tool calls. Text that is not a continuation of what was shown (a retry that
        answered otherwise after its first attempt streamed) cannot be taken back: it is
        left out, and the answer by id is the record."""
        out: list[Record] = []
        text = str(answer.get("text") or "")
        if text.startswith(self.sent) and len(text) > len(self.sent):
            out.append({"content": text[len(self.sent):]})
        calls = [{"id": c["id"], "name": c["name"], "arguments_json": c["arguments_json"]}
                 for c in answer.get("tool_calls") or ()]
        if self.passthrough and len(calls) > self.calls_sent:
            out += tool_call_deltas(calls[self.calls_sent:], self.calls_sent)
        return out


async def _chunks(gw: Gateway, accepted: Accepted, model: str,
                  timeline: AsyncIterator[tuple[str, Record]],
                  first: tuple[str, Record] | None, include_usage: bool,
                  passthrough: bool) -> AsyncIterator[str]:
    """The role chunk, the model's deltas as they come, the rest from the answer, the
    finish chunk, the usage chunk, ``[DONE]``."""
    follower = DeltaFollower(passthrough)
    try:
        yield _chunk(accepted, model, {"role": "assistant", "content": ""}, None, include_usage)
        item = first
        try:
            while item is None or item[0] != "answer":
                if item is not None and item[0] == "delta":
                    for delta in follower.take(item[1]):
                        yield _chunk(accepted, model, delta, None, include_usage)
                item = await anext(timeline)
        except (WaitTimeout, StopAsyncIteration):
            yield _error_event(deadline_error(accepted.request_id))
            return
        answer = item[1]
        error = answer_error(answer, accepted.request_id)
        if error is not None:
            yield _error_event(error)
            return
        for delta in follower.rest(answer):
            yield _chunk(accepted, model, delta, None, include_usage)
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
