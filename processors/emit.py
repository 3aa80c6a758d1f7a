"""Sending from inside a Faust agent: encode once, one place, plus dead letters."""

from __future__ import annotations

import time
import uuid
from typing import Any

from clawstream.processors.app import app, raw_topic
from clawstream.processors.conversation import Output
from clawstream.schemas import encode
from clawstream.schemas.names import DEAD_LETTER
from clawstream.streams.topics import DLQ


def now_ms() -> int:
    return int(time.time() * 1000)


async def send(output: Output) -> None:
    await app.send(raw_topic(output.topic), key=output.key.encode(),
                   value=encode(output.schema, output.record))


async def dead_letter(event: Any, reason: str, error_class: str,
                      record: dict[str, Any] | None = None) -> None:
    """An unprocessable message goes to the DLQ unchanged, with why; the worker carries on."""
    msg = event.message
    record = record or {}
    dl = {
        "dlq_id": uuid.uuid4().hex,
        "reason": reason,
        "error_class": error_class,
        "at_ms": now_ms(),
        "source_topic": msg.topic,
        "source_partition": msg.partition,
        "source_offset": msg.offset,
        "key": event.key if isinstance(event.key, bytes) else None,
        "payload": event.value if isinstance(event.value, bytes) else b"",
        "request_id": record.get("request_id"),
        "conversation_id": record.get("conversation_id"),
        "tenant_id": record.get("tenant_id"),
        "step_id": record.get("step_id"),
        "parameters_json": None,
        "prompt_signature": None,
        "attempts": [],
    }
    await send(Output(DLQ.name, dl["conversation_id"] or "dlq", DEAD_LETTER, dl))
