"""``wait_for_answer`` (the CLI's and the Python helper's wait) on the real broker: it reads
the conversation's one partition from the request's time on, never the answer topic from
the start."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Producer

from clawstream.config import Settings
from clawstream.processors.records import answer
from clawstream.schemas import encode
from clawstream.schemas.names import AGENT_ANSWER
from clawstream.streams.publisher import new_request, now_ms, producer_config
from clawstream.streams.subscriber import (
    ANSWER_CLOCK_SLACK_MS,
    answer_since,
    consumer,
    key_partition,
    wait_for_answer,
)
from clawstream.streams.topics import ANSWERS

pytestmark = pytest.mark.integration


def test_wait_for_answer_starts_at_the_request_time_on_the_conversations_partition(
        stack: Settings) -> None:
    conversation = f"wait-{uuid.uuid4().hex}"
    request = new_request(agent="chat", conversation_id=conversation, text="hi",
                          idempotency_key=f"key-{uuid.uuid4().hex}")
    reader = consumer(stack.bootstrap_servers)
    partitions = len(reader.list_topics(ANSWERS.name, timeout=10).topics[ANSWERS.name]
                     .partitions)
    reader.close()
    assert partitions > 1, "the test stack's answer topic has several partitions"
    mine = key_partition(conversation, partitions)
    producer = Producer(producer_config(stack.bootstrap_servers))

    def send(text: str, partition: int, at_ms: int) -> None:
        record = answer(request, "ok", text, None, at_ms, "v1").record
        producer.produce(ANSWERS.name, encode(AGENT_ANSWER, record), conversation.encode(),
                         partition=partition, timestamp=at_ms)
        assert producer.flush(10) == 0

    send("stale: an answer of an hour ago under the same key", mine, now_ms() - 3_600_000)
    # A request made a little later than anything already on the partition (so no earlier
    # record falls inside the clock slack before its time).
    since = now_ms() + ANSWER_CLOCK_SLACK_MS + 1_000
    send("decoy: not the conversation's partition", (mine + 1) % partitions, since)
    # Neither is the answer to a request made now: nothing is found ...
    assert wait_for_answer(stack.bootstrap_servers, ANSWERS.name,
                           idempotency_key=request["idempotency_key"],
                           conversation_id=conversation, timeout_s=3, since_ms=since) is None
    send("fresh", mine, since)
    # ... until its answer comes.
    found = wait_for_answer(stack.bootstrap_servers, ANSWERS.name,
                            idempotency_key=request["idempotency_key"],
                            conversation_id=conversation, timeout_s=30, since_ms=since)
    assert found is not None and found["text"] == "fresh"
    # A key that may be a repeat (no since): the first answer ever filed under it.
    first = wait_for_answer(stack.bootstrap_servers, ANSWERS.name,
                            idempotency_key=request["idempotency_key"],
                            conversation_id=conversation, timeout_s=30, since_ms=None)
    assert first is not None and first["text"].startswith("stale")


def test_answer_since_is_the_request_time_unless_the_key_was_given() -> None:
    fresh = new_request(agent="chat", conversation_id="c", text="hi")
    assert answer_since(fresh) == fresh["created_at_ms"]
    assert answer_since(new_request(agent="chat", conversation_id="c", text="hi",
                                    idempotency_key="mine")) is None
