"""Reading decoded events: the answer subscriber services and downstream consumers import."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from clawstream.schemas import DecodeError, decode, decode_as
from clawstream.schemas.names import AGENT_ANSWER
from clawstream.schemas.records import AgentAnswer, WireRecord


def _consumer(bootstrap: str, group: str | None = None) -> Consumer:
    return Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group or f"clawstream-reader-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": group is not None,
        "auto.offset.reset": "earliest",
    })


def read_topic(
    bootstrap: str,
    topic: str,
    *,
    until: Callable[[str, WireRecord], bool] | None = None,
    timeout_s: float = 10.0,
    from_beginning: bool = True,
) -> Iterator[tuple[str, WireRecord]]:
    """Yield (schema name, record) from ``topic`` until ``until`` says stop or nothing new
    arrives for ``timeout_s`` (the topic's end for an analyst's replay)."""
    consumer = _consumer(bootstrap)
    try:
        metadata = consumer.list_topics(topic, timeout=10.0).topics[topic]
        start = OFFSET_BEGINNING if from_beginning else -1  # -1 = end
        consumer.assign([TopicPartition(topic, p, start) for p in metadata.partitions])
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < timeout_s:
            msg = consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            idle_since = time.monotonic()
            try:
                name, record = decode(msg.value())
            except DecodeError:
                continue
            yield name, record
            if until is not None and until(name, record):
                return
    finally:
        consumer.close()


def poll_answer(consumer: Consumer, timeout_s: float) -> AgentAnswer | None:
    """The next answer the consumer reads within ``timeout_s``; None for nothing, an error
    or a record that is not an answer."""
    msg = consumer.poll(timeout_s)
    if msg is None or msg.error():
        return None
    try:
        return decode_as(AGENT_ANSWER, msg.value())
    except DecodeError:
        return None


def wait_for_answer(bootstrap: str, answers_topic: str, *, idempotency_key: str,
                    conversation_id: str, timeout_s: float = 120.0) -> AgentAnswer | None:
    """The first answer for ``idempotency_key``: a repeat of a request gets no new answer
    event, so this reads the conversation's history from the beginning."""
    deadline = time.monotonic() + timeout_s
    consumer = _consumer(bootstrap)
    try:
        metadata = consumer.list_topics(answers_topic, timeout=10.0).topics[answers_topic]
        consumer.assign([TopicPartition(answers_topic, p, OFFSET_BEGINNING)
                         for p in metadata.partitions])
        while time.monotonic() < deadline:
            record = poll_answer(consumer, 0.2)
            if record is None:
                continue
            if (record["conversation_id"] == conversation_id
                    and record["idempotency_key"] == idempotency_key):
                return record
        return None
    finally:
        consumer.close()


class AnswerCollector:
    """Awaits the answers of many requests at once (an eval's scenarios, a load test): one
    consumer, started at the answer topic's current end before any request is sent, reads
    in a thread and hands each awaited answer to whoever waits on its idempotency key.
    One reader instead of one per request, so awaiting N answers reads the topic once."""

    def __init__(self, bootstrap: str, answers_topic: str) -> None:
        self._consumer = _consumer(bootstrap)
        metadata = self._consumer.list_topics(answers_topic, timeout=10.0).topics[
            answers_topic]
        starts = []
        for p in metadata.partitions:
            _, high = self._consumer.get_watermark_offsets(TopicPartition(answers_topic, p),
                                                           timeout=10.0)
            starts.append(TopicPartition(answers_topic, p, high))
        self._consumer.assign(starts)
        self._answers: dict[str, AgentAnswer] = {}
        self._ready = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="answer-collector",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                record = poll_answer(self._consumer, 0.2)
                if record is None:
                    continue
                with self._ready:
                    self._answers.setdefault(record["idempotency_key"], record)
                    self._ready.notify_all()
        finally:
            self._consumer.close()

    def wait(self, idempotency_key: str, timeout_s: float) -> AgentAnswer | None:
        """The answer for a request sent after this collector started, or None."""
        with self._ready:
            self._ready.wait_for(lambda: idempotency_key in self._answers, timeout_s)
            return self._answers.get(idempotency_key)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def __enter__(self) -> AnswerCollector:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
