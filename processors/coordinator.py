"""The per-conversation coordinator: the only writer of a conversation's state."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from clawstream.settings import get_settings
from processors.app import WORKER_NAME, app, conversations, coordinator_topic, request_dedup
from processors.conversation import on_request, on_result
from processors.emit import dead_letter, now_ms, send
from processors.flow import coordination
from processors.keys import dedup_key
from schemas import DecodeError, decode
from schemas.names import AGENT_REQUEST, STEP_RESULT

log = logging.getLogger(__name__)


def _timeout_ms(lane: str) -> int:
    cfg = get_settings()
    seconds = cfg.interactive_step_timeout_s if lane == "interactive" else cfg.batch_step_timeout_s
    return int(seconds * 1000)


@app.agent(coordinator_topic)
async def coordinate(stream):  # type: ignore[no-untyped-def]
    async for event in stream.events():
        try:
            name, record = decode(event.value)
        except DecodeError as exc:
            log.warning("dead-lettering undecodable message: %s", exc)
            await dead_letter(event, str(exc), "DecodeError")
            continue
        try:
            await _handle(event, name, record)
        except Exception as exc:
            # A poison message must not stop every other conversation on this worker.
            log.exception("dead-lettering %s that could not be processed", name)
            await dead_letter(event, f"processing failed: {exc!r}", type(exc).__name__, record)


def _mark_answered(requests: Iterable[dict[str, Any] | None]) -> None:
    for req in filter(None, requests):
        key = dedup_key(req["tenant_id"], req["conversation_id"], req["idempotency_key"])
        request_dedup[key] = {**(request_dedup.get(key) or {}), "status": "answered"}


async def _handle(event: Any, name: str, record: dict[str, Any]) -> None:
    if name == AGENT_REQUEST:
        key = dedup_key(record["tenant_id"], record["conversation_id"],
                        record["idempotency_key"])
        if request_dedup.get(key) is None:
            rejection = await coordination.gate(
                record, conversations.get(record["conversation_id"]), get_settings())
            if rejection is not None:  # not in dedup: the client may retry with its key
                for output in coordination.rejection_outputs(record, rejection):
                    await send(output)
                return
        decision = on_request(conversations.get(record["conversation_id"]),
                              request_dedup.get(key), record, now_ms(),
                              _timeout_ms(record["lane"]))
        new_conv, outputs, answered_now = await coordination.apply(
            decision.conversation, decision.outputs, _timeout_ms, get_settings())
        request_dedup[key] = decision.dedup
        _mark_answered(answered_now)
        conversations[record["conversation_id"]] = new_conv
    elif name == STEP_RESULT:
        conv = conversations.get(record["conversation_id"])
        lane = conv["active"]["request"]["lane"] if conv and conv["active"] else "interactive"
        coordination.count_result(conv, record)
        conv, outputs, answered = on_result(conv, record, now_ms(), _timeout_ms(lane))
        conv, outputs, also = await coordination.apply(conv, outputs, _timeout_ms,
                                                       get_settings())
        _mark_answered([answered, *also])
        conversations[record["conversation_id"]] = conv
    else:
        await dead_letter(event, f"unexpected {name} on {event.message.topic}",
                          "UnexpectedSchema", record)
        return
    for output in outputs:
        await send(output)
    log.debug("%s handled %s", WORKER_NAME, name)
