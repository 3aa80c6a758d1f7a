"""The audit trail on the real stack: retention per topic as the settings say (also for
topics that exist already), and per-step usage on the events, which outlive the results."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from clawstream.config import Settings
from clawstream.deploy.local import up
from clawstream.streams.kafka_access import client_config
from clawstream.streams.topics import ANSWERS, DAY_MS, EVENTS, RESULTS, TOOL_REQUESTS
from tests.integration.flow import ask, events_of, has_event

pytestmark = pytest.mark.integration


def _retention(settings: Settings, *topics: str) -> dict[str, int]:
    admin = AdminClient(client_config(settings.bootstrap_servers))
    described = admin.describe_configs([ConfigResource(ResourceType.TOPIC, t) for t in topics])
    return {res.name: int(f.result()["retention.ms"].value) for res, f in described.items()}


def test_up_creates_topics_with_audit_retention_and_updates_existing_ones(
        stack: Settings) -> None:
    topics = (ANSWERS.name, EVENTS.name, RESULTS.name, TOOL_REQUESTS.name)
    assert _retention(stack, *topics) == {ANSWERS.name: -1, EVENTS.name: -1,
                                          RESULTS.name: 7 * DAY_MS,
                                          TOOL_REQUESTS.name: 7 * DAY_MS}
    changed = stack.model_copy(update={"topic_retention_ms": {
        EVENTS.name: 400 * DAY_MS, RESULTS.name: 2 * DAY_MS}})
    try:
        up(changed, with_workers=False, with_inference=False)  # the stack runs: topics only
        assert _retention(stack, *topics) == {ANSWERS.name: -1, EVENTS.name: 400 * DAY_MS,
                                              RESULTS.name: 2 * DAY_MS,
                                              TOOL_REQUESTS.name: 7 * DAY_MS}
    finally:
        up(stack, with_workers=False, with_inference=False)
    assert _retention(stack, EVENTS.name, RESULTS.name) == {EVENTS.name: -1,
                                                           RESULTS.name: 7 * DAY_MS}


def test_step_completed_events_carry_the_steps_tokens_and_cost(worker: Settings) -> None:
    conversation = f"audit-{uuid.uuid4().hex[:8]}"
    answer = ask(worker, agent="researcher", conversation_id=conversation,
                 text=f"Where are tool results cached? ({conversation})")  # all caches miss
    assert answer["status"] == "ok"
    events = events_of(worker, conversation, until=has_event("answer_emitted"))
    completed = [e["detail"] for e in events if e["event_type"] == "step_completed"]
    assert len(completed) == len(answer["timeline"]) >= 2
    for key in ("prompt_tokens", "completion_tokens"):
        assert sum(int(d[key]) for d in completed) == answer["usage"][key], (
            completed, answer["timeline"], answer["usage"])
    assert sum(float(d["cost_usd"]) for d in completed) == pytest.approx(
        answer["usage"]["cost_usd"])
    model = [d for d in completed if int(d["completion_tokens"]) > 0]
    assert model and float(model[0]["cost_usd"]) > 0
    assert model[0]["model"] and model[0]["cache_hit"] == "false"
