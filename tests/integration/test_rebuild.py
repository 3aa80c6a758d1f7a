"""``clawstream replay --rebuild`` on the real stack: the coordinator's rules run again over
a conversation's events arrive at what the workers' tables hold (the changelogs), and a
table that disagrees with its events is shown, path by path."""

from __future__ import annotations

import json
from typing import Any

import pytest
from confluent_kafka import Producer
from typer.testing import CliRunner

from clawstream.cli.app import app
from clawstream.cli.rebuild_cli import live_view
from clawstream.config import Settings
from clawstream.deploy.local.wait import wait_for
from clawstream.streams.kafka_access import client_config
from clawstream.streams.subscriber import key_partition
from clawstream.streams.topics import CONVERSATIONS_TABLE, changelog_topic
from tests.integration.flow import answer_to, ask, script, script_marker, send

pytestmark = pytest.mark.integration


def rebuild(conversation_id: str) -> Any:
    return CliRunner(env={"COLUMNS": "200"}).invoke(app, ["replay", "--rebuild",
                                                          conversation_id])


def settled(settings: Settings, conversation_id: str, requests: int) -> dict[str, Any]:
    """The live tables once the worker wrote the last answer's state (the tables are
    written after the answer is sent)."""
    partition = key_partition(conversation_id, settings.partitions)
    seen: dict[str, Any] = {}

    def done() -> bool:
        seen.update(live_view(settings, conversation_id, partition, []))
        conv = seen["conversation"]
        return (conv is not None and conv["active"] is None
                and len(conv["exchanges"]) == requests
                and all(e["status"] == "answered" for e in seen["dedup"].values()))

    assert wait_for(done, timeout=60, interval=0.5) is None, seen
    return seen


def test_a_conversation_rebuilt_from_its_events_equals_the_live_tables(
        worker: Settings) -> None:
    marker = script_marker()
    script(worker, marker, {"text": "fine after one failure", "error": {"status": 500}})
    conversation_id = f"rb-{marker[-8:]}"
    retried = ask(worker, agent="assistant", conversation_id=conversation_id,
                  text=f"Say something. {marker}")
    assert retried["status"] == "ok"
    key = f"k-{marker}"
    first = send(worker, agent="chat", conversation_id=conversation_id, text="Hello there.",
                 idempotency_key=key)
    duplicate = send(worker, agent="chat", conversation_id=conversation_id,
                     text="Hello there.", idempotency_key=key)
    assert answer_to(worker, first)["status"] == "ok"
    answer_to(worker, duplicate)
    tools = ask(worker, agent="researcher", conversation_id=conversation_id,
                text="Where are the caches?")
    assert len(tools["timeline"]) >= 2
    settled(worker, conversation_id, requests=3)

    result = rebuild(conversation_id)
    assert result.exit_code == 0, result.output
    assert "the rebuilt state equals the live tables" in result.output


def test_a_table_that_disagrees_with_its_events_is_shown(worker: Settings) -> None:
    conversation_id = f"rb-{script_marker()[-8:]}"
    assert ask(worker, agent="chat", conversation_id=conversation_id,
               text="Hello there.")["status"] == "ok"
    live = settled(worker, conversation_id, requests=1)["conversation"]
    tampered = json.loads(json.dumps(live))
    tampered["exchanges"][0]["assistant"] = "something never said"
    topic = changelog_topic(worker.app_id, CONVERSATIONS_TABLE)
    partition = key_partition(conversation_id, worker.partitions)
    producer = Producer(client_config(worker.bootstrap_servers))

    def write(state: Any) -> None:
        producer.produce(topic, json.dumps(state).encode(),
                         json.dumps(conversation_id).encode(), partition=partition)
        assert producer.flush(30) == 0

    write(tampered)
    try:
        result = rebuild(conversation_id)
        assert result.exit_code == 1, result.output
        assert "conversation.exchanges[0].assistant" in result.output
        assert "something never said" in result.output
    finally:
        write(live)  # a worker that recovers the partition gets the true state back
    assert rebuild(conversation_id).exit_code == 0
