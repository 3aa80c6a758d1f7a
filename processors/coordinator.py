"""The per-conversation coordinator: the only writer of a conversation's state."""

from __future__ import annotations

import logging
from typing import Any

from clawstream.settings import get_settings
from processors.app import WORKER_NAME, app, conversations, coordinator_topic, request_dedup
from processors.conversation import on_request, on_result
from processors.emit import dead_letter, now_ms, send
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


async def _handle(event: Any, name: str, record: dict[str, Any]) -> None:
    if name == AGENT_REQUEST:
        key = dedup_key(record["tenant_id"], record["conversation_id"],
                        record["idempotency_key"])
        decision = on_request(conversations.get(record["conversation_id"]),
                              request_dedup.get(key), record, now_ms(),
                              _timeout_ms(record["lane"]))
        request_dedup[key] = decision.dedup
        conversations[record["conversation_id"]] = decision.conversation
        outputs = decision.outputs
    elif name == STEP_RESULT:
        conv = conversations.get(record["conversation_id"])
        lane = conv["active"]["request"]["lane"] if conv and conv["active"] else "interactive"
        conv, outputs, answered = on_result(conv, record, now_ms(), _timeout_ms(lane))
        if answered is not None:
            key = dedup_key(answered["tenant_id"], answered["conversation_id"],
                            answered["idempotency_key"])
            request_dedup[key] = {**(request_dedup.get(key) or {}), "status": "answered"}
        conversations[record["conversation_id"]] = conv
    else:
        await dead_letter(event, f"unexpected {name} on {event.message.topic}",
                          "UnexpectedSchema", record)
        return
    for output in outputs:
        await send(output)
    log.debug("%s handled %s", WORKER_NAME, name)
