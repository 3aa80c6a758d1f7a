"""Flow control on the real stack: limits, lanes, tokens/s, degrade, budgets, context."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import pytest
import redis

from clawstream.config import Settings
from clawstream.processors.flow.flags import set_flag
from clawstream.processors.flow.limiter import excess_over_rate, measured_rate
from clawstream.processors.keys import admissions_key
from clawstream.schemas.names import STEP_COMMAND
from clawstream.streams.publisher import Publisher, new_request, publish_request
from clawstream.streams.subscriber import read_topic
from clawstream.streams.topics import ANSWERS, RESULTS, TOOL_REQUESTS
from tests.integration.flow import events_of, has_event, records_of

pytestmark = pytest.mark.integration


def _send(settings: Settings, n: int, **fields: Any) -> list[dict[str, Any]]:
    requests = []
    with Publisher(settings.bootstrap_servers) as publisher:  # closing waits for the acks
        for i in range(n):
            # one user per request: these tests are about tenants, lanes and pools
            req = new_request(conversation_id=fields.pop("conversation_id", None)
                              or f"flow-{uuid.uuid4().hex[:8]}", text=f"Say hello #{i}",
                              user_id=f"u-{uuid.uuid4().hex[:8]}", **fields)
            publish_request(publisher, req)
            requests.append(req)
    return requests


def _publish(settings: Settings, request: dict[str, Any]) -> None:
    with Publisher(settings.bootstrap_servers) as publisher:
        publish_request(publisher, request).result()


def _answers(settings: Settings, requests: list[dict[str, Any]], timeout_s: float = 180
             ) -> dict[str, dict[str, Any]]:
    wanted = {r["request_id"] for r in requests}
    got: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    for _, answer in read_topic(settings.bootstrap_servers, ANSWERS.name, timeout_s=timeout_s,
                                until=lambda _n, r: wanted <= got.keys() | {r["request_id"]}):
        if answer["request_id"] in wanted:
            got[answer["request_id"]] = answer
        assert time.monotonic() < deadline
    assert wanted <= got.keys(), f"{len(wanted - got.keys())} request(s) got no answer"
    return got


def _ask(settings: Settings, agent: str, **fields: Any) -> dict[str, Any]:
    [req] = _send(settings, 1, agent=agent, **fields)
    return _answers(settings, [req])[req["request_id"]]


def test_tenant_over_its_bucket_is_rejected_with_a_hint_while_another_is_served(
        worker: Settings) -> None:
    flooder = f"t-flood-{uuid.uuid4().hex[:6]}"
    set_flag(worker.bootstrap_servers, f"limit.tenant.{flooder}", "0.05/2", by="test")
    # The flag may take a moment to reach the worker: flood until the bucket bites.
    deadline = time.monotonic() + 10
    rejected: list[dict[str, Any]] = []
    while not rejected:
        assert time.monotonic() < deadline, "the tenant limit never applied"
        flood = _send(worker, 4, agent="chat", tenant_id=flooder)
        answers = _answers(worker, flood).values()
        rejected = [a for a in answers if a["status"] == "rejected"]
    assert all("retry after" in a["reason"] and flooder in a["reason"] for a in rejected)
    other = _ask(worker, "chat", tenant_id=f"t-calm-{uuid.uuid4().hex[:6]}")
    assert other["status"] == "ok"
    # A redelivery of a rejected request is a duplicate: still one answer ...
    first = next(r for r in flood if r["request_id"] == rejected[0]["request_id"])
    _publish(worker, first)
    events_of(worker, first["conversation_id"], until=has_event("request_duplicate"))
    assert len(records_of(worker, ANSWERS.name, first["conversation_id"])) == 1
    # ... while the client's retry (new request id, same key) is checked afresh.
    set_flag(worker.bootstrap_servers, f"limit.tenant.{flooder}", "100/100", by="test")
    retry = new_request(agent="chat", conversation_id=first["conversation_id"],
                        text=first["text"], idempotency_key=first["idempotency_key"],
                        tenant_id=flooder, user_id=f"u-{uuid.uuid4().hex[:8]}")
    deadline = time.monotonic() + 10
    while True:  # until the raised limit has reached the worker (flags apply within 2 s)
        _publish(worker, retry)
        again = _answers(worker, [retry])[retry["request_id"]]
        if again["status"] == "ok" or time.monotonic() > deadline:
            break
        retry = {**retry, "request_id": str(uuid.uuid4())}
    assert again["status"] == "ok" and again["idempotency_key"] == first["idempotency_key"]


def _backlog(settings: Settings, tenant: str, per_s: float, n: int) -> list[dict[str, Any]]:
    """``n`` requests a client created at ``per_s`` a second, the last one now, published at
    once: the backlog Kafka holds when our side was down while the client went on."""
    publisher = Publisher(settings.bootstrap_servers)
    now = int(time.time() * 1000)
    requests = []
    for i in range(n):
        req = new_request(agent="fault-flaky", conversation_id=f"backlog-{uuid.uuid4().hex[:8]}",
                          text="go", tenant_id=tenant, user_id=f"u-{uuid.uuid4().hex[:8]}",
                          options={"args0": json.dumps({"fail_attempts": 0})})
        req["created_at_ms"] = now - int((n - 1 - i) * 1000 / per_s)
        requests.append(req)
    for req in requests:
        publish_request(publisher, req)
    return requests


def test_a_backlog_after_an_outage_is_not_rejected_a_client_over_its_rate_is(
        worker: Settings) -> None:
    calm, eager = (f"t-{kind}-{uuid.uuid4().hex[:6]}" for kind in ("calm", "eager"))
    for tenant in (calm, eager):  # 2 requests/s, burst 4: a 2 s window holds 4
        set_flag(worker.bootstrap_servers, f"limit.tenant.{tenant}", "2/4", by="test")
    # The flags travel on the control topic (in order): once a burst of the eager client is
    # refused, the worker has both. A backlog sent before that, or while the flag arrived,
    # would be judged partly without its limit.
    deadline = time.monotonic() + 30
    while not any(a["status"] == "rejected"
                  for a in _answers(worker, _backlog(worker, eager, 1000.0, 6)).values()):
        assert time.monotonic() < deadline, "the tenant limit never applied"
    # The client over its rate (6/s) is rejected ...
    answers = _answers(worker, _backlog(worker, eager, 6.0, 24)).values()
    rejected = sum(a["status"] == "rejected" for a in answers)
    assert rejected >= 12 and all(a["status"] in ("ok", "rejected") for a in answers)
    # ... while a backlog of a client within its rate (1.5/s), handled in one burst, is not.
    answers = _answers(worker, _backlog(worker, calm, 1.5, 24)).values()
    assert [a["status"] for a in answers] == ["ok"] * 24


def _admissions(settings: Settings, conversations: set[str], rate: float
                ) -> list[dict[str, Any]]:
    """The small pool's admission log entries of ``conversations`` made at ``rate``."""
    log = [json.loads(e) for e in redis.Redis.from_url(settings.redis_url).lrange(
        admissions_key("small"), 0, -1)]
    return [e for e in log if e["step_id"].split(":")[1] in conversations
            and e["rate"] == rate]


def _await_pool_rate(settings: Settings, rate: float) -> None:
    """Until a probe's model step is admitted at ``rate``: the flag travels on the control
    topic, and a flood sent before the worker has it would run unlimited (on a loaded
    machine that took long enough for half the flood to be answered at once)."""
    deadline = time.monotonic() + 60
    while True:
        probe = new_request(agent="chat", conversation_id=f"probe-{uuid.uuid4().hex[:8]}",
                            text=f"Say hello ({uuid.uuid4().hex})", tenant_id="t-probe")
        _publish(settings, probe)  # a text of its own: a cached answer takes no admission
        _answers(settings, [probe])
        if _admissions(settings, {probe["conversation_id"]}, rate):
            return
        assert time.monotonic() < deadline, f"the pool's rate never became {rate:g}"


def test_interactive_overtakes_a_batch_flood_and_limiter_holds_its_rate(
        worker: Settings) -> None:
    rate = 60.0
    set_flag(worker.bootstrap_servers, "rate.pool.small", f"{rate:g}", by="test")
    try:
        _await_pool_rate(worker, rate)
        batch = _send(worker, 8, agent="chat", lane="batch", tenant_id="t-batch")
        interactive = _send(worker, 2, agent="chat", lane="interactive", tenant_id="t-web")
        answers = _answers(worker, batch + interactive, timeout_s=240)
    finally:
        set_flag(worker.bootstrap_servers, "rate.pool.small", "1020", by="test")
    done = {r["request_id"]: answers[r["request_id"]]["answered_at_ms"]
            for r in batch + interactive}
    assert all(a["status"] == "ok" for a in answers.values())
    last_interactive = max(done[r["request_id"]] for r in interactive)
    batch_after = [r for r in batch if done[r["request_id"]] > last_interactive]
    # published last, yet answered before at least half of the earlier batch flood
    assert len(batch_after) >= 4, f"interactive waited behind the batch lane: {done}"
    ours = _admissions(worker, {r["conversation_id"] for r in batch + interactive}, rate)
    assert len(ours) >= 6, "too few admissions under the configured rate"
    # The contract: at no admission had the pool taken more than its bucket could supply
    # (a token of slack for the log's millisecond clock).
    capacity = max(1.0, rate * worker.pool_burst_s)
    assert excess_over_rate(ours, rate, capacity) <= 1.0, ours
    # And the limiter kept the pool near its rate. Below it, not above: a `chat` step's
    # estimate (prompt + 64) exceeds the 60-token bucket, so each step waits for a full
    # one, and each wake-up a loaded machine delays lets it overflow; those tokens are lost
    # (measured 49-53 tokens/s of 60 with neighbours' stacks busy; under 40 on a machine
    # loaded by other stacks, which feed the limiter slower than its refill).
    assert 0.6 * rate <= measured_rate(ours) <= 1.1 * rate, ours


def test_degrade_skips_the_expensive_tool_and_marks_the_answer(worker: Settings) -> None:
    set_flag(worker.bootstrap_servers, "degrade", "on", by="test")
    try:
        deadline = time.monotonic() + 10
        while (answer := _ask(worker, "researcher"))["status"] != "degraded":
            assert time.monotonic() < deadline, "degrade never applied"
        tool = answer["timeline"][0]
        assert (tool["step_type"], tool["worker"]) == ("tool", "flow-control")
        assert "expensive tool retrieve skipped" in answer["reason"]
        assert "routed to pool small" in answer["reason"]
    finally:
        set_flag(worker.bootstrap_servers, "degrade", "off", by="test")
    deadline = time.monotonic() + 10
    while (answer := _ask(worker, "researcher"))["status"] != "ok":
        assert time.monotonic() < deadline, "degrade never switched off"
    assert answer["timeline"][0]["worker"] != "flow-control"


def test_budgets_end_requests_with_their_reason(worker: Settings) -> None:
    cut = _ask(worker, "researcher", options={"max_steps": "1"})
    assert cut["status"] == "degraded" and "step budget" in cut["reason"]
    assert [e["worker"] == "flow-control" for e in cut["timeline"]] == [False, True]
    refused = _ask(worker, "chat", options={"max_steps": "0"})
    assert refused["status"] == "rejected"
    assert "option max_steps must be a positive integer, got '0'" in refused["reason"]


def test_context_keeps_n_exchanges_and_recall_finds_an_older_one(worker: Settings) -> None:
    conversation = f"ctx-{uuid.uuid4().hex[:8]}"
    kept = worker.context_exchanges
    questions = ["My cat is called Zanzibar."] + [f"Short question {i}?" for i in range(kept + 1)]
    answers = []
    for q in questions:
        req = new_request(agent="chat", conversation_id=conversation, text=q)
        _publish(worker, req)
        answers.append(_answers(worker, [req])[req["request_id"]])
    prompts = [r for _, r in read_topic(worker.bootstrap_servers, "inference.requests",
                                        timeout_s=3)
               if r["request_id"] == answers[-1]["request_id"]]
    contents = [m["content"] for m in prompts[-1]["model_call"]["messages"]]
    assert sum(m["role"] == "user" for m in prompts[-1]["model_call"]["messages"]) == kept + 1
    assert "My cat is called Zanzibar." not in contents
    hits = asyncio.run(_recall(worker, conversation, "what is the cat called", kept))
    assert hits and hits[0]["user"] == "My cat is called Zanzibar."


async def _recall(settings: Settings, conversation: str, query: str, kept: int
                  ) -> list[dict[str, Any]]:
    step_id = f"tool:{conversation}:recall-{uuid.uuid4().hex[:6]}"
    cmd = {"step_id": step_id, "step_index": 0, "step_type": "tool", "attempt": 1,
           "request_id": str(uuid.uuid4()), "conversation_id": conversation,
           "tenant_id": "default", "trace_id": uuid.uuid4().hex, "lane": "interactive",
           "issued_at_ms": int(time.time() * 1000), "timeout_ms": 20000,
           "deadline_ms": int(time.time() * 1000) + 60000, "model_call": None,
           "tool_call": {"name": "recall", "version": "1", "mutating": False,
                         "arguments_json": json.dumps({"conversation_id": conversation,
                                                       "query": query, "kept": kept})}}
    with Publisher(settings.bootstrap_servers) as publisher:
        publisher.publish(TOOL_REQUESTS.name, conversation, STEP_COMMAND, cmd).result()
    for _, res in read_topic(settings.bootstrap_servers, RESULTS.name, timeout_s=60,
                             until=lambda _n, r: r.get("step_id") == step_id):
        if res.get("step_id") == step_id:
            assert res["status"] == "ok", res["error"]
            return list(json.loads(res["output"]))
    raise AssertionError("no recall result")
