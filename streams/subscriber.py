"""Reading decoded events: the answer subscriber services and downstream consumers import."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from aiokafka.partitioner import murmur2
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicPartition

from clawstream.schemas import DecodeError, decode, decode_as
from clawstream.schemas.names import AGENT_ANSWER
from clawstream.schemas.records import AgentAnswer, AgentRequest, WireRecord
from clawstream.streams.kafka_access import client_config

log = logging.getLogger(__name__)


def consumer(bootstrap: str, group: str | None = None, **overrides: Any) -> Consumer:
    """A consumer; without ``group`` a throw-away group id that is never committed (readers
    that assign partitions themselves)."""
    return Consumer({
        **client_config(bootstrap),
        "group.id": group or f"clawstream-reader-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": group is not None,
        "auto.offset.reset": "earliest",
        **overrides,
    })


_consumer = consumer


class ConsumerLoop:
    """A consumer read in a background thread until :meth:`stop`; ``error`` says why the
    thread died, ``alive`` whether it still reads. Subclasses say what one step is."""

    def __init__(self, reader: Consumer, name: str) -> None:
        self._consumer = reader
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.error: str | None = None

    def _step(self) -> None:
        raise NotImplementedError

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.error is None

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._step()
        except Exception as exc:
            self.error = repr(exc)
            log.exception("%s stopped", self._thread.name)
        finally:
            self._consumer.close()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        elif self._thread.ident is None:  # never started: nobody else closes it
            self._consumer.close()


class TopicTail(ConsumerLoop):
    """Every partition of ``topics`` from the end they had at :meth:`start`, read in a
    background thread: a server's view of what happens from now on. No group: every
    replica of a server sees every record (each holds its own waiters), and nothing is
    ever read again from the beginning.

    ``on_message(topic, key, value)`` runs in the reader thread; it should filter cheaply
    (by key) and hand the little it keeps to its own event loop."""

    def __init__(self, bootstrap: str, topics: Sequence[str],
                 on_message: Callable[[str, bytes | None, bytes | None], None]) -> None:
        super().__init__(consumer(bootstrap, None, **{"fetch.wait.max.ms": 100}),
                         "clawstream-tail")
        self._topics = tuple(topics)
        self._on_message = on_message

    def start(self, timeout_s: float = 10.0) -> None:
        """Pin every partition at its current end (explicit offsets, so a record produced
        after ``start`` returns is always seen), then start reading."""
        assignment = []
        for topic in self._topics:
            metadata = self._consumer.list_topics(topic, timeout=timeout_s).topics[topic]
            if metadata.error is not None:
                raise KafkaException(metadata.error)
            for partition in metadata.partitions:
                tp = TopicPartition(topic, partition)
                _low, high = self._consumer.get_watermark_offsets(tp, timeout=timeout_s)
                assignment.append(TopicPartition(topic, partition, high))
        self._consumer.assign(assignment)
        self._thread.start()

    def _step(self) -> None:
        # The first record as soon as it is there, then whatever else is queued: a batch
        # call that waits to fill (confluent-kafka before 2.13) would add its timeout.
        first = self._consumer.poll(0.1)
        if first is None:
            return
        for msg in (first, *self._consumer.consume(500, 0)):
            if msg.error():
                continue
            try:
                self._on_message(str(msg.topic()), msg.key(), msg.value())
            except Exception:  # one bad record must not stop the tail
                log.exception("tail handler failed on %s", msg.topic())


def read_messages(bootstrap: str, topics: list[str], *, timeout_s: float = 10.0,
                  from_beginning: bool = True) -> Iterator[Message]:
    """Every message of ``topics`` (all partitions), undecoded, until nothing new arrives
    for ``timeout_s``: for readers of what is not Avro (a table's changelog) or that need
    where a record lies (partition, offset)."""
    reader = _consumer(bootstrap)
    try:
        start = OFFSET_BEGINNING if from_beginning else -1  # -1 = end
        assignment = []
        for topic in topics:
            metadata = reader.list_topics(topic, timeout=10.0).topics[topic]
            assignment += [TopicPartition(topic, p, start) for p in metadata.partitions]
        reader.assign(assignment)
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < timeout_s:
            msg = reader.poll(0.2)
            if msg is None or msg.error():
                continue
            idle_since = time.monotonic()
            yield msg
    finally:
        reader.close()


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
    for msg in read_messages(bootstrap, [topic], timeout_s=timeout_s,
                             from_beginning=from_beginning):
        try:
            name, record = decode(msg.value())
        except DecodeError:
            continue
        yield name, record
        if until is not None and until(name, record):
            return


ANSWER_CLOCK_SLACK_MS = 5_000
"""How far before ``since_ms`` an answer is still looked for: the coordinator stamps answers
with its own clock, which may lag the caller's a little."""


def key_partition(key: str, partitions: int) -> int:
    """The partition Kafka's default (murmur2) partitioner puts ``key`` on: the publisher and
    Faust both use it, so a conversation's requests and answers share one partition."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def answered_in_partition(bootstrap: str, topic: str, partition: int, since_ms: int, *,
                          timeout_s: float = 10.0) -> Counter[str]:
    """How often each request id was answered on one partition of ``topic`` from
    ``since_ms`` (the broker's time index) up to the partition's end as it is now. Raises
    ``TimeoutError`` when the end is not reached within ``timeout_s`` (a broker away): the
    caller cannot know then."""
    deadline = time.monotonic() + timeout_s
    reader = _consumer(bootstrap)
    try:
        _low, high = reader.get_watermark_offsets(TopicPartition(topic, partition),
                                                  timeout=timeout_s)
        found = reader.offsets_for_times([TopicPartition(topic, partition, since_ms)],
                                         timeout=timeout_s)[0]
        start = found.offset if found.offset >= 0 else high
        answered: Counter[str] = Counter()
        if start >= high:
            return answered
        reader.assign([TopicPartition(topic, partition, start)])
        while time.monotonic() < deadline:
            msg = reader.poll(0.2)
            if msg is None or msg.error():
                continue
            with contextlib.suppress(DecodeError):
                answered[decode_as(AGENT_ANSWER, msg.value())["request_id"]] += 1
            if (msg.offset() or 0) >= high - 1:
                return answered
        raise TimeoutError(f"{topic}/{partition}: offset {high - 1} not reached in {timeout_s} s")
    finally:
        reader.close()


def answer_since(request: AgentRequest) -> int | None:
    """Where :func:`wait_for_answer` may start for ``request``: its creation time when its
    idempotency key is its own (new_request's default: it cannot be a repeat); None when the
    caller gave the key, which may be an old request's."""
    if request["idempotency_key"] == request["request_id"]:
        return request["created_at_ms"]
    return None


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
                    conversation_id: str, timeout_s: float = 120.0,
                    since_ms: int | None = None) -> AgentAnswer | None:
    """The first answer for ``idempotency_key``, read from the conversation's one partition
    only, from ``since_ms`` on (the request's ``created_at_ms`` for a request just
    published: its answer can only come later) found with the broker's time index, not by
    reading the topic from the start. ``since_ms`` None is for a key that may be a repeat
    of an old request (a repeat gets no new answer event): the conversation's partition is
    then read from its beginning."""
    deadline = time.monotonic() + timeout_s
    consumer = _consumer(bootstrap)
    try:
        metadata = consumer.list_topics(answers_topic, timeout=10.0).topics[answers_topic]
        partition = key_partition(conversation_id, len(metadata.partitions))
        start = TopicPartition(answers_topic, partition, OFFSET_BEGINNING)
        if since_ms is not None:
            # The end first: if nothing is that recent yet, the answer comes after it.
            _low, high = consumer.get_watermark_offsets(start, timeout=10.0)
            found = consumer.offsets_for_times(
                [TopicPartition(answers_topic, partition,
                                max(0, since_ms - ANSWER_CLOCK_SLACK_MS))], timeout=10.0)[0]
            start = TopicPartition(answers_topic, partition,
                                   found.offset if found.offset >= 0 else high)
        consumer.assign([start])
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
