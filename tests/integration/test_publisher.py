"""The non-blocking publisher against the real broker: every future settles with the
broker's ack, callbacks see it, and what was published arrives in order per key."""

from __future__ import annotations

import threading
import uuid

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from clawstream.config import Settings
from clawstream.schemas import decode, encode
from clawstream.schemas.names import CONTROL_FLAG
from clawstream.streams.kafka_access import client_config
from clawstream.streams.publisher import Publisher, PublishError
from clawstream.streams.subscriber import read_topic

pytestmark = pytest.mark.integration


def _topic(settings: Settings) -> str:
    name = f"test.publisher.{uuid.uuid4().hex[:8]}"
    admin = AdminClient(client_config(settings.bootstrap_servers))
    admin.create_topics([NewTopic(name, num_partitions=2, replication_factor=1)])[name].result()
    return name


def test_every_delivery_settles_with_the_ack_and_arrives_in_order(stack: Settings) -> None:
    topic = _topic(stack)
    reports: list[PublishError | None] = []
    lock = threading.Lock()

    def counted(error: PublishError | None) -> None:
        with lock:
            reports.append(error)

    n = 300
    with Publisher(stack.bootstrap_servers) as publisher:
        deliveries = [
            publisher.publish(topic, f"key-{i % 3}", CONTROL_FLAG,
                              {"name": f"flag-{i}", "value": str(i), "updated_at_ms": i,
                               "updated_by": "test"}, on_delivery=counted)
            for i in range(n)
        ]
        assert deliveries[-1].result(timeout=30) is None  # one ack, waited for on demand
    # Closing flushed: everything is settled, acked, and reported once.
    assert all(d.done() and d.exception() is None for d in deliveries)
    assert reports == [None] * n
    seen = [record["value"] for _, record in read_topic(stack.bootstrap_servers, topic,
                                                        timeout_s=3)]
    assert sorted(int(v) for v in seen) == list(range(n))
    for key in range(3):  # per key (one partition each) in publishing order
        ours = [int(v) for v in seen if int(v) % 3 == key]
        assert ours == sorted(ours)


def test_raw_publish_is_decodable_after_waiting_for_its_ack(stack: Settings) -> None:
    topic = _topic(stack)
    value = encode(CONTROL_FLAG, {"name": "x", "value": "1", "updated_at_ms": 1,
                                  "updated_by": "test"})
    with Publisher(stack.bootstrap_servers) as publisher:
        publisher.publish_raw(topic, b"x", value).result(timeout=30)
    [(_, record)] = list(read_topic(stack.bootstrap_servers, topic, timeout_s=3))
    assert decode(value)[1] == record
