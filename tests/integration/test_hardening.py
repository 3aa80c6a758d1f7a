"""The outside acceptance run's defects (issue 11, 2-7) on the real stack: every request
gets exactly one answer with a readable reason, duplicates run nothing twice, and a Redis
restart under a mutating request does not fail it."""

from __future__ import annotations

import concurrent.futures
import json
import uuid
from typing import Any

import pytest

from clawstream.config import Settings
from clawstream.deploy.local import redis as redis_local
from clawstream.schemas import encode
from clawstream.schemas.names import AGENT_REQUEST, STEP_COMMAND
from clawstream.streams.publisher import Publisher, new_request, publish_request
from clawstream.streams.topics import ANSWERS, DLQ, RESULTS, TOOL_REQUESTS
from fixtures import faults
from tests.integration.flow import (
    answer_to,
    await_push,
    events_of,
    has_event,
    records_of,
    redis_client,
    send,
)

pytestmark = pytest.mark.integration


def _cid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _args(**steps: dict[str, Any]) -> dict[str, str]:
    return {name: json.dumps(value) for name, value in steps.items()}


def _only_answer(settings: Settings, conversation: str, request_id: str) -> dict[str, Any]:
    """The request's answer, after making sure it is its only one."""
    answers = [a for a in records_of(settings, ANSWERS.name, conversation)
               if a["request_id"] == request_id]
    assert len(answers) == 1, answers
    return dict(answers[0])


def test_a_request_over_the_size_limit_is_rejected_naming_the_limit(worker: Settings
                                                                     ) -> None:
    request = new_request(agent="chat", conversation_id=_cid("big"), text="x" * 900_000)
    answer = answer_to(worker, send_raw(worker, request))
    assert answer["status"] == "rejected"
    assert f"over the limit of {worker.max_request_chars}" in answer["reason"]
    assert _only_answer(worker, request["conversation_id"], request["request_id"])


def test_a_large_request_under_the_limit_is_answered_once(worker: Settings) -> None:
    request = new_request(agent="chat", conversation_id=_cid("large"),
                          text="tell me about kafka " * 4_900)  # ~98k characters
    answer = answer_to(worker, send_raw(worker, request))
    assert answer["status"] in ("ok", "failed"), answer
    assert answer["status"] == "ok" or answer["reason"]
    assert _only_answer(worker, request["conversation_id"], request["request_id"])


def send_raw(settings: Settings, request: Any) -> Any:
    with Publisher(settings.bootstrap_servers) as publisher:
        publish_request(publisher, request).result()
    return request


def test_a_plan_that_raises_is_answered_failed_with_its_letter(worker: Settings) -> None:
    request = send(worker, agent="fault-effect", conversation_id=_cid("notjson"),
                   text="go", options={"args0": "{not json"})
    answer = answer_to(worker, request)
    assert answer["status"] == "failed" and "JSONDecodeError" in answer["reason"]
    letters = records_of(worker, DLQ.name, request["conversation_id"],
                         until=lambda found: bool(found))
    assert letters[0]["dlq_id"] in answer["reason"]


@pytest.mark.parametrize(("fields", "says"), [
    ({"conversation_id": ""}, "field conversation_id is empty"),
    ({"text": "   "}, "field text is empty"),
    ({"options": {"max_steps": "-5"}}, "option max_steps must be a positive integer, got '-5'"),
    ({"options": {"max_cache_age_s": "NaN"}}, "option max_cache_age_s must be a number"),
])
def test_bad_fields_are_rejected_naming_them(worker: Settings, fields: dict[str, Any],
                                             says: str) -> None:
    request = {**new_request(agent="chat", conversation_id=_cid("bad"), text="hi"),
               **fields}
    answer = answer_to(worker, send_raw(worker, request))
    assert answer["status"] == "rejected" and says in answer["reason"]


def test_a_request_on_the_results_topic_is_refused(worker: Settings) -> None:
    request = new_request(agent="chat", conversation_id=_cid("lost"), text="hi")
    with Publisher(worker.bootstrap_servers) as publisher:
        publisher.publish(RESULTS.name, request["conversation_id"], AGENT_REQUEST,
                          request).result()
    answer = answer_to(worker, request)
    assert answer["status"] == "rejected"
    assert "requests go to agent.requests.interactive" in answer["reason"]


def test_fifty_duplicates_of_an_in_flight_request_run_its_step_once(worker: Settings
                                                                     ) -> None:
    r = redis_client(worker)
    counter, conversation = _cid("dups"), _cid("dups")
    request = send(worker, agent="fault-effect", conversation_id=conversation, text="go",
                   options=_args(args0={"counter": counter, "hold": True}))
    await_push(r, faults.STARTED_KEY.format(counter=counter))  # the step is running
    with Publisher(worker.bootstrap_servers) as publisher:  # closing waits for the acks
        for n in range(50):  # the same request id, and client retries under the same key
            copy = request if n % 2 else {**request, "request_id": str(uuid.uuid4())}
            publish_request(publisher, copy)
    events_of(worker, conversation, until=has_event("request_duplicate", count=50))
    r.set(faults.RELEASE_KEY.format(counter=counter), "1")
    answer = answer_to(worker, request)
    assert answer["status"] == "ok"
    assert r.get(faults.CALLS_KEY.format(counter=counter)) == "1"
    assert r.get(faults.EFFECTS_KEY.format(counter=counter)) == "1"
    assert len(records_of(worker, ANSWERS.name, conversation)) == 1


def test_two_concurrent_executions_of_one_step_apply_it_once(worker: Settings) -> None:
    r = redis_client(worker)
    counter, conversation = _cid("twice"), _cid("twice")
    request = send(worker, agent="fault-effect", conversation_id=conversation, text="go",
                   options=_args(args0={"counter": counter, "hold": True}))
    step_id = await_push(r, faults.STARTED_KEY.format(counter=counter))
    [command] = [c for c in records_of(worker, TOOL_REQUESTS.name, conversation)
                 if c["step_id"] == step_id][:1]
    # a second execution of the very same attempt, while the first holds its claim
    with Publisher(worker.bootstrap_servers) as publisher:
        publisher.publish_raw(TOOL_REQUESTS.name, conversation.encode(),
                              encode(STEP_COMMAND, command)).result()
    busy = [e for e in events_of(worker, conversation, until=has_event(
        "retry_scheduled", infrastructure="true")) if e["event_type"] == "retry_scheduled"]
    assert busy[0]["step_id"] == step_id and "StepBusy" in busy[0]["detail"]["error"]
    r.set(faults.RELEASE_KEY.format(counter=counter), "1")
    assert answer_to(worker, request)["status"] == "ok"
    assert r.get(faults.CALLS_KEY.format(counter=counter)) == "1"


def test_reusing_a_key_for_another_request_is_refused(worker: Settings) -> None:
    conversation, key = _cid("reuse"), f"k-{uuid.uuid4().hex[:6]}"
    first = send(worker, agent="chat", conversation_id=conversation, text="What is Kafka?",
                 idempotency_key=key)
    assert answer_to(worker, first)["status"] == "ok"
    other = send(worker, agent="chat", conversation_id=conversation, text="What is Redis?",
                 idempotency_key=key)
    [refused] = [a for a in records_of(worker, ANSWERS.name, conversation,
                                       until=lambda found: len(found) == 2)
                 if a["request_id"] == other["request_id"]]
    assert refused["status"] == "rejected"
    assert "was used for a different request" in refused["reason"]
    same = send(worker, agent="chat", conversation_id=conversation, text="What is Kafka?",
                idempotency_key=key)  # the client's retry: the first answer, no new one
    events_of(worker, conversation, until=has_event("request_duplicate"))
    assert len([a for a in records_of(worker, ANSWERS.name, conversation)
                if a["request_id"] == same["request_id"]]) == 0


def test_a_redis_restart_under_mutating_requests_fails_none(worker: Settings) -> None:
    requests = []
    assert redis_local.stop(worker)
    try:
        for _ in range(3):
            requests.append(send(worker, agent="fault-effect", conversation_id=_cid("redis"),
                                 text="go", options=_args(args0={"counter": _cid("c")})))
        for request in requests:  # each meets Redis down at least once
            events_of(worker, request["conversation_id"],
                      until=has_event("retry_scheduled", infrastructure="true"))
    finally:
        redis_local.start(worker)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda q: answer_to(worker, q), requests))
    assert [a["status"] for a in answers] == ["ok"] * 3, answers
    r = redis_client(worker)
    for request in requests:
        counter = json.loads(request["options"]["args0"])["counter"]
        assert r.get(faults.EFFECTS_KEY.format(counter=counter)) == "1"
