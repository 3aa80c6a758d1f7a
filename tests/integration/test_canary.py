"""Canaries on the real stack (issue 17): two versions of a team's agent live at once in a
real worker; ``clawstream canary start`` sends 20 % of 500 new conversations to the
candidate (within binomial bounds, exactly the conversations whose hash falls under the
share), each conversation stays on its version, and a candidate with an injected failure
rate is rolled back by the worker's watcher, with the events to show it."""

from __future__ import annotations

import math
import time
import uuid
from typing import Any

import pytest
from typer.testing import CliRunner

from clawstream.cli import canary_cli
from clawstream.cli.app import app
from clawstream.config import Settings
from clawstream.processors.canary.routing import bucket
from clawstream.processors.flow.flags import read_flags, set_flag
from clawstream.streams.publisher import Publisher, new_request, publish_request
from clawstream.streams.subscriber import read_topic
from clawstream.streams.topics import ANSWERS, EVENTS
from tests.integration.flow import Record, ask, events_of, has_event

pytestmark = pytest.mark.integration
RUNNER = CliRunner()
canary_cli.console.width = 240  # the status tables whole, not wrapped at 80 columns


def _cli(*args: str) -> str:
    result = RUNNER.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def _open_tenant(settings: Settings, tenant: str) -> None:
    """Many conversations at once: lift the tenant's entrance limit for the test."""
    set_flag(settings.bootstrap_servers, f"limit.tenant.{tenant}", "1000/1000", by="test")


def _until_routed(settings: Settings, agent: str, share: float, version: str,
                  tenant: str) -> None:
    """Await the rule in the worker: new conversations under the share reach ``version``."""
    deadline = time.monotonic() + 60
    while True:
        cid = next(c for c in (f"probe-{uuid.uuid4().hex[:10]}" for _ in range(1000))
                   if bucket(agent, c) * 100 < share)
        answer = ask(settings, agent=agent, conversation_id=cid, text="probe",
                     tenant_id=tenant, user_id=cid)
        if answer["agent_version"] == version:
            return
        assert time.monotonic() < deadline, f"the rule never reached the worker ({answer})"


def _converse(settings: Settings, agent: str, ids: list[str], tenant: str,
              text: str = "hi") -> dict[str, Record]:
    """One request in each conversation, all sent at once; their answers by conversation."""
    keys: dict[str, str] = {}
    with Publisher(settings.bootstrap_servers) as publisher:  # closing waits for the acks
        for cid in ids:
            request = new_request(agent=agent, conversation_id=cid, text=text,
                                  tenant_id=tenant, user_id=cid, lane="batch")
            publish_request(publisher, request)
            keys[request["idempotency_key"]] = cid
    answers: dict[str, Record] = {}

    def collect(_name: str, record: Any) -> bool:
        cid = keys.get(record.get("idempotency_key"))
        if cid is not None:
            answers[cid] = record
        return len(answers) == len(keys)

    for _ in read_topic(settings.bootstrap_servers, ANSWERS.name, until=collect,
                        timeout_s=120):
        pass
    assert len(answers) == len(keys), f"{len(keys) - len(answers)} answers missing"
    return answers


def test_a_canary_takes_its_share_of_new_conversations_and_keeps_each_on_its_version(
        worker: Settings) -> None:
    agent, tenant, run = "team-canary", f"canary-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex[:6]
    _open_tenant(worker, tenant)
    _cli("canary", "start", agent, "--candidate", "2.0", "--share", "0.2",
         "--no-auto-rollback")
    try:
        _until_routed(worker, agent, 20, "2.0", tenant)
        ids = [f"can-{run}-{i}" for i in range(500)]
        first = _converse(worker, agent, ids, tenant)
        assert {a["status"] for a in first.values()} == {"ok"}
        on_candidate = [cid for cid, a in first.items() if a["agent_version"] == "2.0"]
        # the hash decides, exactly as the pure rule says; and the share is about 20 %
        assert sorted(on_candidate) == sorted(c for c in ids if bucket(agent, c) * 100 < 20)
        sd = math.sqrt(500 * 0.2 * 0.8)
        assert 100 - 4 * sd <= len(on_candidate) <= 100 + 4 * sd, len(on_candidate)
        assert {first[c]["text"] for c in on_candidate} == {"HI HI"}  # the candidate ran
        # a conversation stays on its version, also when the share changes
        _cli("canary", "start", agent, "--candidate", "2.0", "--share", "0.5",
             "--no-auto-rollback")
        again = [*on_candidate[:20], *[c for c in ids if c not in on_candidate][:20]]
        _until_routed(worker, agent, 50, "2.0", tenant)
        second = _converse(worker, agent, again, tenant, text="again")
        assert {c: a["agent_version"] for c, a in second.items()} == {
            c: first[c]["agent_version"] for c in again}
        routed = events_of(worker, on_candidate[0], until=has_event("answer_emitted"))
        [decision] = [e for e in routed if e["event_type"] == "version_routed"]
        assert (decision["agent_version"], decision["detail"]["reason"]) == ("2.0", "new")
        status = _cli("canary", "status", agent, "--idle", "2")
        assert "current=1.0 candidate=2.0 share=50" in status and "canary_set" in status
    finally:
        _cli("canary", "rollback", agent, "--reason", "test over")


def _canary_events(settings: Settings, agent: str, kind: str) -> list[Record]:
    found: list[Record] = []

    def seen(_name: str, record: Any) -> bool:
        if record.get("agent") == agent and record.get("event_type") == kind:
            found.append(record)
        return bool(found)

    for _ in read_topic(settings.bootstrap_servers, EVENTS.name, until=seen, timeout_s=90):
        pass
    return found


def test_a_failing_candidate_is_rolled_back_automatically_with_the_events_to_show_it(
        worker: Settings) -> None:
    agent, tenant, run = "team-risky", f"risky-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex[:6]
    _open_tenant(worker, tenant)
    _cli("canary", "start", agent, "--candidate", "2.0", "--share", "0.5", "--margin", "0.1",
         "--min-sample", "20")
    _until_routed(worker, agent, 50, "2.0", tenant)
    answers = _converse(worker, agent, [f"risky-{run}-{i}" for i in range(120)], tenant)
    by_version: dict[str, list[str]] = {}
    for a in answers.values():
        by_version.setdefault(a["agent_version"], []).append(a["status"])
    assert set(by_version["1.0"]) == {"ok"}
    assert "failed" in by_version["2.0"]  # the injected failure rate
    [rolled] = _canary_events(worker, agent, "canary_rolled_back")
    assert rolled["detail"]["by"].startswith("auto-rollback:")
    assert rolled["detail"]["rolled_back"] == "2.0"
    assert "failed/degraded rate" in rolled["detail"]["reason"]
    assert int(rolled["detail"]["candidate_requests"]) >= 20
    assert float(rolled["detail"]["candidate_bad_rate"]) > 0.1
    assert read_flags(worker.bootstrap_servers)[f"route.agent.{agent}"]["value"] == (
        "current=1.0")
    # the candidate takes nothing more: a conversation under the old share gets 1.0, and
    # one of the candidate's conversations moves back at its next request, saying so
    cid = next(c for c, a in answers.items() if a["agent_version"] == "2.0")
    deadline = time.monotonic() + 60
    while (moved := ask(worker, agent=agent, conversation_id=cid, text="back?",
                        tenant_id=tenant, user_id=cid))["agent_version"] != "1.0":
        assert time.monotonic() < deadline, moved
    events = events_of(worker, cid, until=has_event("version_routed", reason="moved"))
    assert [e["detail"]["previous"] for e in events
            if e["event_type"] == "version_routed" and e["detail"]["reason"] == "moved"
            ] == ["2.0"]
    status = _cli("canary", "status", agent, "--idle", "2")
    assert "canary_rolled_back" in status and "auto-rollback" in status
