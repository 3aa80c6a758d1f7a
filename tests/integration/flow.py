"""What the integration tests do over and over: send a request, await its answer or an
event, read Redis. Awaiting reads the topics until the awaited record arrives (or a
timeout fails the test); nothing sleeps."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import redis
from aiokafka.partitioner import murmur2

from clawstream.config import Settings
from clawstream.streams.publisher import Publisher, new_request, publish_request
from clawstream.streams.subscriber import answer_since, read_topic, wait_for_answer
from clawstream.streams.topics import ANSWERS, EVENTS

Record = dict[str, Any]


def send(settings: Settings, **fields: Any) -> Record:
    request = new_request(**fields)
    with Publisher(settings.bootstrap_servers) as publisher:
        publish_request(publisher, request).result()
    return request


def answer_to(settings: Settings, request: Record, timeout_s: float = 180) -> Record:
    answer = wait_for_answer(settings.bootstrap_servers, ANSWERS.name,
                             idempotency_key=request["idempotency_key"],
                             conversation_id=request["conversation_id"], timeout_s=timeout_s,
                             since_ms=answer_since(request))
    assert answer is not None, f"no answer for {request['request_id']}"
    return answer


def ask(settings: Settings, **fields: Any) -> Record:
    return answer_to(settings, send(settings, **fields))


def records_of(settings: Settings, topic: str, conversation_id: str,
               until: Callable[[list[Record]], bool] | None = None,
               timeout_s: float = 60) -> list[Record]:
    """The conversation's records on ``topic``; with ``until``, read on (from the start)
    until it holds for what was read, else fail after ``timeout_s`` without any."""
    found: list[Record] = []

    def done(_name: str, record: Record) -> bool:
        if record.get("conversation_id") == conversation_id:
            found.append(record)
            return until is not None and until(found)
        return False

    for _ in read_topic(settings.bootstrap_servers, topic, until=done,
                        timeout_s=timeout_s if until else 3):
        pass
    if until is not None:
        assert until(found), f"gave up waiting on {topic} for {conversation_id}: {found}"
    return found


def events_of(settings: Settings, conversation_id: str,
              until: Callable[[list[Record]], bool] | None = None,
              timeout_s: float = 60) -> list[Record]:
    return records_of(settings, EVENTS.name, conversation_id, until, timeout_s)


def has_event(kind: str, count: int = 1, **detail: str) -> Callable[[list[Record]], bool]:
    def check(events: list[Record]) -> bool:
        return sum(e["event_type"] == kind and all(e["detail"].get(k) == v
                                                   for k, v in detail.items())
                   for e in events) >= count
    return check


def redis_client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, decode_responses=True)


def await_push(client: redis.Redis, key: str, timeout_s: float = 60) -> str:
    """Block until a tool pushes to ``key`` (it does when it reaches a point of interest)."""
    popped = client.blpop([key], timeout=timeout_s)
    assert popped is not None, f"nothing was pushed to {key} within {timeout_s} s"
    return str(popped[1])


def same_partition_ids(prefix: str, partitions: int, count: int) -> list[str]:
    """``count`` conversation ids that Kafka's default (murmur2) partitioner puts on one
    partition, as the coordinator's and the publisher's partitioners both do."""
    def partition(key: str) -> int:
        return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions

    ids = [f"{prefix}-{i}" for i in range(count * partitions * 8)]
    target = partition(ids[0])
    return [i for i in ids if partition(i) == target][:count]


def script_marker() -> str:
    """A fresh marker: a model call whose messages contain it follows its script."""
    return f"script-{uuid.uuid4().hex}"


def script(settings: Settings, marker: str, *turns: dict[str, Any]) -> None:
    """Register the scripted model's turns for ``marker`` (``inference/scripted.py``)."""
    response = httpx.post(f"{settings.serve_url}/script",
                          json={"marker": marker, "turns": list(turns)}, timeout=10)
    assert response.status_code in (200, 204), response.text


def await_in_file(path: Path, offset: int, text: str, timeout_s: float = 30) -> None:
    """Follow a log file past ``offset`` until ``text`` appears (the worker logs it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.is_file():
            with path.open("rb") as f:
                f.seek(offset)
                if text.encode() in f.read():
                    return
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never appeared in {path}")


@contextmanager
def side_stack(name: str, port_base: int, **overrides: Any) -> Iterator[Settings]:
    """A stack of its own beside the session's test stack (its own state dir
    ``.clawstream-test-<name>`` and ports moved by ``port_base`` and
    ``CLAWSTREAM_PORT_OFFSET``), for tests that need another shape (more brokers, the
    simulated model); up on entry (``with_inference`` among ``overrides``), purged on exit.
    Side stacks run no Prometheus (the session's scrapes its own stack)."""
    from clawstream.deploy.local import down, up

    base = int(os.environ.get("CLAWSTREAM_PORT_OFFSET", "0")) + port_base
    with_inference = bool(overrides.pop("with_inference", True))
    settings = Settings(
        state_dir=Path(__file__).resolve().parents[2] / f".clawstream-test-{name}",
        kafka_heap="384m", kafka_port=29100 + base, kafka_controller_port=29101 + base,
        redis_port=26400 + base, worker_web_port=26100 + base, ray_port=26500 + base,
        serve_http_port=28100 + base, gateway_port=28200 + base,
        ray_metrics_port=26600 + base, prometheus_port=29200 + base,
        schema_registry_port=28300 + base,
        **{"prometheus_enabled": False, **overrides})
    down(settings, purge=True)
    try:
        up(settings, with_inference=with_inference)
        yield settings
    finally:
        down(settings, purge=True)
