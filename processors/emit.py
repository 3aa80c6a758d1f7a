"""Sending from inside a Faust agent: encode once, in one place, plus dead letters."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import faust

from clawstream.processors.app import raw_topic
from clawstream.processors.keys import short_hash
from clawstream.processors.records import Output
from clawstream.schemas import encode
from clawstream.schemas.names import DEAD_LETTER
from clawstream.schemas.records import DeadLetter
from clawstream.streams.topics import DLQ


def now_ms() -> int:
    return int(time.time() * 1000)


class Emitter:
    """One worker's producer side: topics are made once per name, not per send."""

    def __init__(self, app: faust.App) -> None:
        self._app = app
        self._topics: dict[str, faust.TopicT] = {}

    def _topic(self, name: str) -> faust.TopicT:
        topic = self._topics.get(name)
        if topic is None:
            topic = self._topics[name] = raw_topic(self._app, name)
        return topic

    async def send(self, output: Output) -> None:
        await self._app.send(self._topic(output.topic), key=output.key.encode(),
                             value=encode(output.schema, output.record))

    async def dead_letter(self, event: Any, reason: str, error_class: str,
                          record: Mapping[str, Any] | None = None) -> str:
        """An unprocessable message goes to the DLQ unchanged, with why; the worker
        carries on. ``record`` is what could be decoded of it (for its ids). Returns the
        letter's id."""
        msg = event.message
        record = record or {}
        dl: DeadLetter = {
            # From where it was read: a redelivered poison message gets the same letter id.
            "dlq_id": short_hash([msg.topic, msg.partition, msg.offset]),
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
        await self.send(Output(DLQ.name, dl["conversation_id"] or "dlq", DEAD_LETTER, dl))
        return dl["dlq_id"]
