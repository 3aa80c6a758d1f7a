"""Our records on real topics against Apache Avro's reference implementation (Java
``BinaryMessageEncoder``/``BinaryMessageDecoder``, tests/avro_spec/SingleObject.java): a
request written by it is answered by the worker, and every record the worker wrote for that
request is read by it. Either way fails if our single-object header differs from the spec's.
The worker writes the registry's wire format when there is a registry: its records are
written again single-object by our codec for the reference reader.
"""

from __future__ import annotations

import io
import json
import subprocess
import time
import uuid
from pathlib import Path

import fastavro
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from clawstream.config import Settings
from clawstream.deploy.local.maven import cache_root, fetch_libs
from clawstream.deploy.local.tools import require_java
from clawstream.schemas import CURRENT, decode, encode
from clawstream.schemas.codec import use_registry
from clawstream.schemas.names import (
    AGENT_ANSWER,
    AGENT_EVENT,
    AGENT_REQUEST,
    EVENT_SCHEMAS,
    STEP_COMMAND,
    STEP_RESULT,
)
from clawstream.streams.kafka_access import client_config
from clawstream.streams.publisher import Publisher, new_request
from clawstream.streams.schema_registry import bind_settings
from clawstream.streams.topics import ANSWERS, EVENTS, RESULTS, TOOL_REQUESTS, request_topic
from tests.integration.flow import answer_to

pytestmark = pytest.mark.integration

SPEC_DIR = Path(__file__).resolve().parents[1] / "avro_spec"
AVRO_VERSION = "1.12.1"


def _java(mode: str, lines: list[str], tmp_path: Path) -> list[str]:
    libs = fetch_libs(SPEC_DIR / "pom.xml", cache_root() / f"avro-{AVRO_VERSION}" / "libs",
                      f"avro-{AVRO_VERSION}.jar", {"avro.version": AVRO_VERSION},
                      "avro.libs.dir", f"org.apache.avro:avro:{AVRO_VERSION}")
    schemas = tmp_path / "schemas.tsv"
    schemas.write_text("".join(f"{n}\t{json.dumps(CURRENT[n])}\n" for n in EVENT_SCHEMAS))
    done = subprocess.run([require_java(), "-cp", f"{libs}/*",
                           str(SPEC_DIR / "SingleObject.java"), mode, str(schemas)],
                          input="".join(f"{line}\n" for line in lines), capture_output=True,
                          text=True, timeout=120, check=True)
    out = done.stdout.splitlines()
    assert len(out) == len(lines), done.stderr
    return out


def _avro_json(name: str, record: dict[str, object]) -> str:
    buf = io.StringIO()
    fastavro.json_writer(buf, CURRENT[name], [record])
    return buf.getvalue().strip()


def _raw_records(settings: Settings, topic: str, key: str, until_count: int,
                 timeout_s: float = 60) -> list[bytes]:
    """The raw values of ``topic`` under ``key``, read from the start until there are
    ``until_count`` of them (or every one there is, once the time is up)."""
    consumer = Consumer({**client_config(settings.bootstrap_servers),
                         "group.id": f"spec-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        found: list[bytes] = []
        deadline = time.monotonic() + timeout_s
        while len(found) < until_count and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error() and msg.key() == key.encode():
                found.append(msg.value())
        return found
    finally:
        consumer.close()


def single_object(value: bytes) -> bytes:
    """A record the worker wrote in the registry's wire format (tested against Confluent's
    deserializer in test_schema_registry.py), written again as single-object by our codec
    without a registry: what a process writes when there is none."""
    if value[:2] == b"\xc3\x01":
        return value
    name, record = decode(value)
    use_registry(None)
    try:
        return encode(name, record)
    finally:
        bind_settings(Settings())


def test_the_reference_implementation_and_our_worker_read_each_other(
        worker: Settings, tmp_path: Path) -> None:
    conversation = f"spec-{uuid.uuid4().hex[:8]}"
    request = new_request(agent="fault-flaky", conversation_id=conversation, text="go",
                          options={"args0": json.dumps({"fail_attempts": 0,
                                                        "output": "read by the spec"})})
    [encoded] = _java("encode", [f"{AGENT_REQUEST}\t{_avro_json(AGENT_REQUEST, request)}"],
                      tmp_path)
    assert not encoded.startswith("ERROR"), encoded
    message = bytes.fromhex(encoded)
    # The spec's header for our schema: C3 01 + little-endian CRC-64-AVRO.
    assert message[:2] == b"\xc3\x01"
    with Publisher(worker.bootstrap_servers) as publisher:
        publisher.publish_raw(request_topic("interactive").name, conversation.encode(),
                              message).result()

    answer = answer_to(worker, request, timeout_s=120)
    assert (answer["status"], answer["text"]) == ("ok", "read by the spec")

    ours = {STEP_COMMAND: _raw_records(worker, TOOL_REQUESTS.name, conversation, 1),
            STEP_RESULT: _raw_records(worker, RESULTS.name, conversation, 1),
            AGENT_ANSWER: _raw_records(worker, ANSWERS.name, conversation, 1),
            AGENT_EVENT: _raw_records(worker, EVENTS.name, conversation, 4)}
    lines = [f"{name}\t{single_object(value).hex()}" for name, values in ours.items()
             for value in values]
    read = _java("decode", lines, tmp_path)
    assert [r for r in read if r.startswith("ERROR")] == []
    decoded = [json.loads(r) for r in read]
    assert {d["conversation_id"] for d in decoded} == {conversation}
    assert {d["request_id"] for d in decoded} == {request["request_id"]}
    assert any(d.get("status") == "ok" and d.get("text") == "read by the spec"
               for d in decoded)
