"""Publishing clawstream events: acks=all, idempotent producer, Avro single-object encoding."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from clawstream.config import get_settings
from clawstream.schemas import encode
from clawstream.schemas.names import AGENT_REQUEST
from clawstream.schemas.records import AgentRequest
from clawstream.streams.topics import parse_lane, request_topic


class PublishError(RuntimeError):
    """The broker did not take the message."""


def now_ms() -> int:
    return int(time.time() * 1000)


class Publisher:
    """A thin, typed producer; one per process is enough."""

    def __init__(self, bootstrap: str) -> None:
        self.failed = 0
        self._producer = Producer({
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 2,
            "message.max.bytes": get_settings().kafka_max_message_bytes,
            # Java's (and aiokafka's) partitioner: requests must land on the same partition
            # as the results Faust produces for that conversation, or co-partitioning breaks.
            "partitioner": "murmur2_random",
        })

    def publish(self, topic: str, key: str, schema: str, record: Mapping[str, Any],
                timeout_s: float = 30.0) -> None:
        """Publish and wait for the broker's ack, so a caller knows nothing was lost."""
        errors: list[KafkaError] = []

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                errors.append(err)

        self._producer.produce(topic, key=key.encode(), value=encode(schema, record),
                               on_delivery=on_delivery)
        remaining = self._producer.flush(timeout_s)
        if remaining:
            raise PublishError(f"{remaining} message(s) not acknowledged within {timeout_s}s")
        if errors:
            raise PublishError(str(errors[0]))

    def send(self, topic: str, key: str, schema: str, record: Mapping[str, Any]) -> None:
        """Queue a message without waiting for its ack: a client that goes on producing
        while the broker is away (the producer retries until its message timeout, 5 min).
        ``close`` waits for the acks; ``failed`` counts messages the broker never took."""
        self._producer.produce(topic, key=key.encode(), value=encode(schema, record),
                               on_delivery=self._count_failure)
        self._producer.poll(0)

    def _count_failure(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self.failed += 1

    def publish_raw(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Raw bytes, for tools that redrive stored payloads (and tests of bad input)."""
        self._producer.produce(topic, key=key, value=value)
        if self._producer.flush(30.0):
            raise PublishError("raw message not acknowledged")

    def close(self, timeout_s: float = 30.0) -> int:
        """Wait for the acks of what was sent; returns how many are still not acknowledged."""
        return int(self._producer.flush(timeout_s))


def _default_deadline_s(lane: str) -> float:
    settings = get_settings()
    return settings.request_deadline_s if lane == "interactive" else (
        settings.batch_request_deadline_s)


def new_request(*, agent: str, conversation_id: str, text: str,
                idempotency_key: str | None = None, tenant_id: str = "default",
                user_id: str = "anonymous", lane: str = "interactive",
                deadline_s: float | None = None, options: dict[str, str] | None = None
                ) -> AgentRequest:
    """A well-formed AgentRequest; the idempotency key defaults to a fresh request id and
    the deadline to the lane's default from settings."""
    if not text.strip():
        raise ValueError("request text is empty")
    request_id = str(uuid.uuid4())
    created = now_ms()
    return {
        "request_id": request_id,
        "idempotency_key": idempotency_key or request_id,
        "conversation_id": conversation_id,
        "tenant_id": tenant_id,
        "user_id": user_id,
        "agent": agent,
        "lane": parse_lane(lane),
        "text": text,
        "created_at_ms": created,
        "deadline_ms": created + int(1000 * (deadline_s if deadline_s is not None
                                             else _default_deadline_s(lane))),
        "trace_id": uuid.uuid4().hex,
        "options": options or {},
        "messages": [],
        "tools": [],
        "parent_request_id": None,
        "parent_step_id": None,
        "delegation": None,
    }


def publish_request(publisher: Publisher, request: AgentRequest, wait: bool = True) -> None:
    """Publish a request on its lane's topic; ``wait=False`` queues it (``Publisher.send``)."""
    publish = publisher.publish if wait else publisher.send
    publish(request_topic(request["lane"]).name, request["conversation_id"], AGENT_REQUEST,
            request)
