"""Publishing clawstream events: acks=all, idempotent producer, Avro single-object encoding."""

from __future__ import annotations

import asyncio
import threading
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


class PublisherBusy(PublishError):
    """The producer's local queue is full: the broker is not keeping up (back off)."""


def producer_config(bootstrap: str, linger_ms: int = 2) -> dict[str, Any]:
    """The one producer configuration: acks from every replica, idempotent, and Java's
    (and aiokafka's) partitioner: requests must land on the same partition as the results
    Faust produces for that conversation, or co-partitioning breaks."""
    return {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": linger_ms,
        "partitioner": "murmur2_random",
        "message.max.bytes": get_settings().kafka_max_message_bytes,
    }


class Publisher:
    """A thin, typed producer; one per process is enough."""

    def __init__(self, bootstrap: str) -> None:
        self._producer = Producer(producer_config(bootstrap))

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

    def publish_raw(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Raw bytes, for tools that redrive stored payloads (and tests of bad input)."""
        self._producer.produce(topic, key=key, value=value)
        if self._producer.flush(30.0):
            raise PublishError("raw message not acknowledged")

    def close(self) -> None:
        self._producer.flush(30.0)


class AsyncPublisher:
    """The producer for servers: ``publish`` awaits the broker's ack without blocking the
    event loop (a background thread serves the delivery reports), so one process keeps
    many requests in flight. A full local queue raises :class:`PublisherBusy` at once."""

    def __init__(self, bootstrap: str, linger_ms: int = 1,
                 delivery_timeout_ms: int = 10_000) -> None:
        self._producer = Producer({**producer_config(bootstrap, linger_ms),
                                   "message.timeout.ms": delivery_timeout_ms})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="clawstream-producer",
                                        daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    async def publish(self, topic: str, key: str, schema: str, record: dict[str, Any]) -> None:
        """Encode (raises on a record that does not fit the schema), send, await the ack."""
        value = encode(schema, record)
        loop = asyncio.get_running_loop()
        acked: asyncio.Future[None] = loop.create_future()

        def settle(err: KafkaError | None) -> None:
            if acked.done():
                return
            if err is None:
                acked.set_result(None)
            else:
                acked.set_exception(PublishError(str(err)))

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            loop.call_soon_threadsafe(settle, err)

        try:
            self._producer.produce(topic, key=key.encode(), value=value,
                                   on_delivery=on_delivery)
        except BufferError as exc:
            raise PublisherBusy("the producer's queue is full") from exc
        await acked

    def close(self, timeout_s: float = 10.0) -> None:
        self._producer.flush(timeout_s)
        self._stop.set()
        self._thread.join(timeout_s)


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
    }


def publish_request(publisher: Publisher, request: AgentRequest) -> None:
    publisher.publish(request_topic(request["lane"]).name, request["conversation_id"],
                      AGENT_REQUEST, request)
