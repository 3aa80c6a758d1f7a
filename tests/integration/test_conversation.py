"""A conversation end to end on the real stack: Kafka, Faust + RocksDB, Redis, Ray Serve."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from clawstream.config import Settings
from clawstream.deploy.local import worker as worker_proc
from clawstream.streams.publisher import Publisher, new_request, publish_request
from clawstream.streams.subscriber import answer_since, read_topic, wait_for_answer
from clawstream.streams.topics import ANSWERS, DLQ, EVENTS, INFERENCE_REQUESTS, REQUESTS_INTERACTIVE

pytestmark = pytest.mark.integration


def _ask(settings: Settings, conversation: str, text: str, key: str | None = None,
         agent: str = "researcher") -> dict[str, Any]:
    request = new_request(agent=agent, conversation_id=conversation, text=text,
                          idempotency_key=key)
    with Publisher(settings.bootstrap_servers) as publisher:
        publish_request(publisher, request).result()
    answer = wait_for_answer(settings.bootstrap_servers, ANSWERS.name,
                             idempotency_key=request["idempotency_key"],
                             conversation_id=conversation, timeout_s=180,
                             since_ms=answer_since(request))
    assert answer is not None, f"no answer for {request['request_id']}"
    return answer


def _answers_for(settings: Settings, conversation: str) -> list[dict[str, Any]]:
    return [r for _, r in read_topic(settings.bootstrap_servers, ANSWERS.name, timeout_s=3)
            if r["conversation_id"] == conversation]


def test_two_turns_keep_context(worker: Settings) -> None:
    conversation = f"ctx-{uuid.uuid4().hex[:8]}"
    first = _ask(worker, conversation, "Where does clawstream keep its caches?")
    second = _ask(worker, conversation, "And how long are tool results kept?")
    assert first["status"] == second["status"] == "ok"
    assert first["text"] and second["text"]
    assert [e["step_type"] for e in second["timeline"]] == ["tool", "model"]
    assert second["usage"]["prompt_tokens"] > 0
    prompts = [r["model_call"]["messages"]
               for _, r in read_topic(worker.bootstrap_servers, INFERENCE_REQUESTS.name,
                                      timeout_s=3)
               if r["request_id"] == second["request_id"]]
    assert prompts, "the second turn's model step was never issued"
    contents = [m["content"] for m in prompts[0]]
    assert "Where does clawstream keep its caches?" in contents
    assert first["text"] in contents


def test_same_idempotency_key_yields_one_answer(worker: Settings) -> None:
    conversation = f"idem-{uuid.uuid4().hex[:8]}"
    key = f"key-{uuid.uuid4().hex}"
    first = _ask(worker, conversation, "What does Ray Serve run?", key=key)
    again = _ask(worker, conversation, "What does Ray Serve run?", key=key)
    assert again["request_id"] == first["request_id"]
    duplicates = [r for _, r in read_topic(
        worker.bootstrap_servers, EVENTS.name, timeout_s=3,
    ) if r["conversation_id"] == conversation and r["event_type"] == "request_duplicate"]
    assert len(duplicates) == 1, "the repeat was not recognised as a duplicate"
    assert len(_answers_for(worker, conversation)) == 1


def test_malformed_request_is_dead_lettered_and_worker_keeps_serving(worker: Settings) -> None:
    marker = uuid.uuid4().bytes
    with Publisher(worker.bootstrap_servers) as publisher:
        publisher.publish_raw(REQUESTS_INTERACTIVE.name, b"bad",
                              b"not avro at all " + marker).result()
    letters = [r for _, r in read_topic(
        worker.bootstrap_servers, DLQ.name, timeout_s=30,
        until=lambda _n, r: marker in r["payload"],
    ) if marker in r["payload"]]
    assert len(letters) == 1
    assert letters[0]["source_topic"] == REQUESTS_INTERACTIVE.name
    assert "header" in letters[0]["reason"]
    answer = _ask(worker, f"after-bad-{uuid.uuid4().hex[:6]}", "What is Kafka for?",
                  agent="chat")
    assert answer["status"] == "ok"


def test_sigkilled_worker_finishes_conversation_after_restart(worker: Settings) -> None:
    conversation = f"crash-{uuid.uuid4().hex[:8]}"
    first = _ask(worker, conversation, "Where does clawstream keep its caches?")
    request = new_request(agent="researcher", conversation_id=conversation,
                          text="And what happens to a restarted worker?")
    with Publisher(worker.bootstrap_servers) as publisher:
        publish_request(publisher, request).result()
    # Kill once the coordinator has issued a step of this request: mid-conversation.
    issued = list(read_topic(
        worker.bootstrap_servers, EVENTS.name, timeout_s=60,
        until=lambda _n, r: r["request_id"] == request["request_id"]
        and r["event_type"] == "step_issued",
    ))
    assert issued and issued[-1][1]["event_type"] == "step_issued"
    assert worker_proc.kill(worker, 0)
    worker_proc.start(worker, 0)
    answer = wait_for_answer(worker.bootstrap_servers, ANSWERS.name,
                             idempotency_key=request["idempotency_key"],
                             conversation_id=conversation, timeout_s=180)
    assert answer is not None and answer["status"] == "ok"
    answers = _answers_for(worker, conversation)
    assert sorted(a["request_id"] for a in answers) == sorted(
        [first["request_id"], request["request_id"]]), "an answer is missing or doubled"
    # the restored conversation state still holds the first exchange
    prompts = [r["model_call"]["messages"]
               for _, r in read_topic(worker.bootstrap_servers, INFERENCE_REQUESTS.name,
                                      timeout_s=3)
               if r["request_id"] == request["request_id"]]
    assert any(m["content"] == first["text"] for m in prompts[-1])
