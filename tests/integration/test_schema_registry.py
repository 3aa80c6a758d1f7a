"""The Confluent wire format on the real stack, read by Confluent's own deserializer: a Kafka
user decodes every topic with confluent-kafka's ``AvroDeserializer`` and the registry
(Apicurio, started by ``up``) and no clawstream code; the registry refuses an incompatible
schema change; records written single-object before the registry are still answered."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext
from typer.testing import CliRunner

from clawstream.cli.app import app
from clawstream.config import Settings
from clawstream.schemas.codec import CURRENT, use_registry
from clawstream.schemas.names import AGENT_ANSWER
from clawstream.streams import schema_registry
from clawstream.streams.kafka_access import client_config
from clawstream.streams.schema_registry import IncompatibleSchema, RegistryClient
from clawstream.streams.topics import (
    ANSWERS,
    EVENTS,
    INFERENCE_REQUESTS,
    REQUESTS_INTERACTIVE,
    RESULTS,
)
from tests.integration.flow import answer_to, ask, send

pytestmark = pytest.mark.integration


def raw_values(settings: Settings, topic: str, conversation_id: str) -> list[bytes]:
    """The conversation's records on ``topic`` as bytes, read by a plain consumer."""
    reader = Consumer({**client_config(settings.bootstrap_servers),
                       "group.id": f"raw-{uuid.uuid4().hex[:8]}",
                       "enable.auto.commit": False})
    try:
        partitions = reader.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: reader.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in partitions}
        reader.assign([TopicPartition(topic, p, 0) for p in partitions if ends[p] > 0])
        todo = {p for p in partitions if ends[p] > 0}
        found = []
        while todo:
            msg = reader.poll(5.0)
            assert msg is not None, f"{topic}: the broker stopped answering"
            if msg.error():
                continue
            p = int(msg.partition() or 0)
            if int(msg.offset() or 0) + 1 >= ends[p]:
                todo.discard(p)
            value = msg.value()
            if msg.key() == conversation_id.encode() and value is not None:
                found.append(value)
        return found
    finally:
        reader.close()


def confluent_records(settings: Settings, topic: str, conversation_id: str
                      ) -> list[dict[str, Any]]:
    """The conversation's records on ``topic`` as a Kafka user reads them: Confluent's
    AvroDeserializer against the registry, nothing of ours."""
    deserializer = AvroDeserializer(SchemaRegistryClient({"url": settings.schema_registry_url}))
    values = raw_values(settings, topic, conversation_id)
    assert all(v[0] == 0 for v in values), f"{topic}: not all in the Confluent format"
    return [deserializer(v, SerializationContext(topic, MessageField.VALUE)) for v in values]


def test_every_topic_of_a_conversation_decodes_with_confluents_deserializer(
        worker: Settings) -> None:
    conversation_id = f"sr-{uuid.uuid4().hex[:8]}"
    answer = ask(worker, agent="researcher", conversation_id=conversation_id,
                 text="Where are the caches?")
    assert answer["status"] == "ok"
    topics = (REQUESTS_INTERACTIVE.name, INFERENCE_REQUESTS.name, RESULTS.name,
              EVENTS.name, ANSWERS.name)
    records = {topic: confluent_records(worker, topic, conversation_id) for topic in topics}
    assert all(records.values()), {t: len(r) for t, r in records.items()}
    [request] = records[REQUESTS_INTERACTIVE.name]
    assert request["request_id"] == answer["request_id"]
    [decoded] = [a for a in records[ANSWERS.name] if a["request_id"] == answer["request_id"]]
    assert decoded["text"] == answer["text"] and decoded["status"] == "ok"
    assert {e["event_type"] for e in records[EVENTS.name]} >= {"request_received",
                                                                 "step_issued"}


def test_the_registry_refuses_an_incompatible_change_and_takes_a_compatible_one(
        worker: Settings) -> None:
    client = RegistryClient(worker.schema_registry_url)
    subject = f"test.compat-{uuid.uuid4().hex[:8]}"
    try:
        base = CURRENT[AGENT_ANSWER]
        client.register(subject, base)
        required = {**base, "fields": [*base["fields"], {"name": "audit_note",
                                                         "type": "string"}]}
        with pytest.raises(IncompatibleSchema, match="incompatible"):
            client.register(subject, required)
        optional = {**base, "fields": [*base["fields"], {"name": "audit_note",
                                                         "type": "string", "default": ""}]}
        assert client.register(subject, optional) > 0
    finally:
        client.close()
    # The migration command registers what is current: the same ids again.
    result = CliRunner().invoke(app, ["schemas", "register"])
    assert result.exit_code == 0, result.output
    assert AGENT_ANSWER in result.output


def test_a_single_object_request_from_before_the_registry_is_still_answered(
        worker: Settings) -> None:
    conversation_id = f"so-{uuid.uuid4().hex[:8]}"
    use_registry(None)  # this process writes as a release before the registry did
    try:
        request = send(worker, agent="chat", conversation_id=conversation_id,
                       text="Hello there.")
    finally:
        schema_registry.bind(worker.schema_registry_url)
    [value] = raw_values(worker, REQUESTS_INTERACTIVE.name, conversation_id)
    assert value[:2] == b"\xc3\x01"
    assert answer_to(worker, request)["status"] == "ok"
