"""Sending from inside a Faust agent: encode once, in one place, plus dead letters."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

import faust

from clawstream.processors.app import raw_topic
from clawstream.processors.keys import short_hash
from clawstream.processors.observe import observe_output
from clawstream.processors.records import Output
from clawstream.schemas import encode
from clawstream.schemas.names import AGENT_ANSWER, DEAD_LETTER
from clawstream.schemas.records import AgentAnswer, DeadLetter
from clawstream.streams.topics import DLQ
from clawstream.streams.tracecontext import headers_for


def now_ms() -> int:
    return int(time.time() * 1000)


class Emitter:
    """One worker's producer side: topics are made once per name, not per send; each
    answer sent is also handed to ``on_answer`` (the OTLP span export, when configured)."""

    def __init__(self, app: faust.App,
                 on_answer: Callable[[AgentAnswer], None] | None = None) -> None:
        self._app = app
        self._topics: dict[str, faust.TopicT] = {}
        self._on_answer = on_answer

    def _topic(self, name: str) -> faust.TopicT:
        topic = self._topics.get(name)
        if topic is None:
            topic = self._topics[name] = raw_topic(self._app, name)
        return topic

    async def send(self, output: Output) -> Awaitable[Any]:
        """Hand ``output`` to the producer; returns its delivery (awaited: the broker has
        it, or an error)."""
        observe_output(output)
        if self._on_answer is not None and output.schema == AGENT_ANSWER:
            self._on_answer(cast(AgentAnswer, output.record))
        return await self._app.send(self._topic(output.topic), key=output.key.encode(),
                                    value=encode(output.schema, output.record),
                                    headers=cast(list[tuple[str, bytes]] | None,
                                                 headers_for(output.schema, output.record)))

    async def deliver(self, outputs: Sequence[Output]) -> None:
        """Send ``outputs`` and return once the broker has every one of them.

        The coordinator writes a conversation's state only after this: a state is then
        never ahead of what it sent. Faust writes a table change to its changelog some
        time after the change, and the source offsets are committed after both; a worker
        killed between the changelog record and the outputs used to recover a state that
        had applied an event whose outputs (the answer, a step command) never left, and
        the event, read again, was taken for a duplicate: nothing ever answered."""
        deliveries = [await self.send(output) for output in outputs]
        await asyncio.gather(*deliveries)

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
