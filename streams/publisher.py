"""Publishing clawstream events: acks=all, idempotent producer, Avro single-object encoding.

``publish`` does not wait: it hands the record to librdkafka (which batches records for
``linger.ms``) and returns a :class:`Delivery`, a future that a background thread settles
from the broker's delivery report. A caller that must know the broker took the message
(the CLI's ``ask``, tests, a service that answers its own client only once the request is
durable) waits on it, ``publish(...).result()``, or calls :meth:`Publisher.flush`; a
service that publishes many records keeps going and looks at the futures (or passes
``on_delivery``) later. Flushing after every record, as this class did, capped any
caller at one broker round trip per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from types import TracebackType
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from clawstream.config import get_settings
from clawstream.schemas import encode
from clawstream.schemas.names import AGENT_REQUEST
from clawstream.schemas.records import AgentRequest
from clawstream.streams.kafka_access import client_config
from clawstream.streams.topics import parse_lane, request_topic
from clawstream.streams.tracecontext import Headers, headers_for

log = logging.getLogger(__name__)

DEFAULT_ACK_TIMEOUT_S = 30.0
_POLL_S = 0.05


class PublishError(RuntimeError):
    """The broker did not take the message."""


class PublisherBusy(PublishError):
    """The producer's local queue is full: the broker is not keeping up (back off)."""


def _why(err: KafkaError, topic: str) -> str:
    if err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
        return (f"the brokers refused this process's login the right to write to {topic} "
                "(its role's ACLs: deploy/access.py)")
    return str(err)


Delivery = Future[None]
"""Settles when the broker acknowledged the record (result ``None``) or gave up on it
(:class:`PublishError`); ``.result(timeout)`` waits for the ack."""

OnDelivery = Callable[[PublishError | None], None]
"""Called from the publisher's delivery thread with ``None`` (acked) or the error."""


def now_ms() -> int:
    return int(time.time() * 1000)


def producer_config(bootstrap: str, linger_ms: int = 2,
                    delivery_timeout_ms: int | None = None) -> dict[str, Any]:
    """The one producer configuration: acks from every replica, idempotent, and Java's
    (and aiokafka's) partitioner: requests must land on the same partition as the results
    Faust produces for that conversation, or co-partitioning breaks."""
    return {
        **client_config(bootstrap),
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": linger_ms,
        "message.max.bytes": get_settings().kafka_max_message_bytes,
        "partitioner": "murmur2_random",
        **({} if delivery_timeout_ms is None else {"message.timeout.ms": delivery_timeout_ms}),
    }


class Publisher:
    """A typed, non-blocking producer; one per process is enough (it is thread-safe).

    Use it as a context manager, or call :meth:`close`: closing flushes what is still
    queued. A full local queue (the broker is not keeping up) makes ``publish`` wait for
    room instead of failing.
    """

    def __init__(self, bootstrap: str, *, linger_ms: int = 2,
                 delivery_timeout_ms: int | None = None, wait_for_room: bool = True) -> None:
        self._producer = Producer(producer_config(bootstrap, linger_ms, delivery_timeout_ms))
        self._wait_for_room = wait_for_room
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve_reports, daemon=True,
                                        name="clawstream-publisher")
        self._thread.start()

    def _serve_reports(self) -> None:
        """Delivery reports only run inside ``poll``/``flush``: this thread is the poller."""
        while not self._closed.is_set():
            self._producer.poll(_POLL_S)

    def publish(self, topic: str, key: str, schema: str, record: Mapping[str, Any], *,
                on_delivery: OnDelivery | None = None) -> Delivery:
        """Encode (raises at once on a record that does not fit ``schema``) and queue;
        the returned future settles with the broker's ack."""
        return self._produce(topic, key.encode(), encode(schema, record), on_delivery,
                             headers_for(schema, record))

    def publish_raw(self, topic: str, key: bytes | None, value: bytes, *,
                    on_delivery: OnDelivery | None = None) -> Delivery:
        """Raw bytes, for tools that redrive stored payloads (and tests of bad input)."""
        return self._produce(topic, key, value, on_delivery)

    def _produce(self, topic: str, key: bytes | None, value: bytes,
                 on_delivery: OnDelivery | None,
                 headers: Headers | None = None) -> Delivery:
        if self._closed.is_set():
            raise PublishError("publisher is closed")
        delivery: Delivery = Future()
        delivery.set_running_or_notify_cancel()

        def report(err: KafkaError | None, _msg: Message) -> None:
            error = None if err is None else PublishError(_why(err, topic))
            if error is None:
                delivery.set_result(None)
            else:
                delivery.set_exception(error)
            if on_delivery is not None:
                try:
                    on_delivery(error)
                except Exception:  # it must not kill the delivery thread
                    log.exception("on_delivery callback failed")

        while True:
            try:
                self._producer.produce(topic, key=key, value=value, on_delivery=report,
                                       headers=headers)
                return delivery
            except BufferError as exc:
                if not self._wait_for_room:
                    raise PublisherBusy("the producer's queue is full") from exc
                self._producer.poll(_POLL_S)  # queue full: serve reports, then retry

    def flush(self, timeout_s: float = DEFAULT_ACK_TIMEOUT_S) -> None:
        """Wait until everything published so far is acked (or failed: see the futures)."""
        remaining = self._producer.flush(timeout_s)
        if remaining:
            raise PublishError(f"{remaining} message(s) not acknowledged within {timeout_s}s")

    def close(self, timeout_s: float = DEFAULT_ACK_TIMEOUT_S) -> None:
        """Flush, then stop the delivery thread; idempotent."""
        if self._closed.is_set():
            return
        try:
            self.flush(timeout_s)
        finally:
            self._closed.set()
            self._thread.join()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class AsyncPublisher:
    """The producer for servers: ``publish`` awaits the broker's ack without blocking the
    event loop, so one process keeps many requests in flight; a full local queue raises
    :class:`PublisherBusy` at once (the server answers "overloaded") instead of waiting."""

    def __init__(self, bootstrap: str, linger_ms: int = 1,
                 delivery_timeout_ms: int = 10_000) -> None:
        self._publisher = Publisher(bootstrap, linger_ms=linger_ms,
                                    delivery_timeout_ms=delivery_timeout_ms,
                                    wait_for_room=False)

    async def publish(self, topic: str, key: str, schema: str, record: Mapping[str, Any]
                      ) -> None:
        """Encode (raises on a record that does not fit the schema), send, await the ack."""
        await asyncio.wrap_future(self._publisher.publish(topic, key, schema, record))

    def close(self, timeout_s: float = 10.0) -> None:
        # Every publish was awaited by the request that made it, which answered its client
        # with the failure: nothing left to report at shutdown.
        with contextlib.suppress(PublishError):
            self._publisher.close(timeout_s)


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


def publish_request(publisher: Publisher, request: AgentRequest) -> Delivery:
    """Queue ``request`` on its lane's topic; ``.result()`` on the answer waits for the ack."""
    return publisher.publish(request_topic(request["lane"]).name, request["conversation_id"],
                             AGENT_REQUEST, request)
