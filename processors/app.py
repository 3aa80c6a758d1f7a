"""The Faust app of one worker: its topics, RocksDB tables and web pages.

Nothing here runs at import time: :func:`create_app` builds a fresh app for a worker name
and settings, so two apps (two workers) can be built in one process, and importing a
processor module creates no clients, directories or timers. The composition root
(:mod:`clawstream.processors.worker`) calls it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

import faust
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from clawstream.config import Settings
from clawstream.streams.topics import (
    CONVERSATIONS_TABLE,
    DEDUP_TABLE,
    INFERENCE_REQUESTS,
    INFERENCE_REQUESTS_BATCH,
    REQUESTS_BATCH,
    REQUESTS_INTERACTIVE,
    RESULTS,
    TOOL_REQUESTS,
)


def faust_credentials(settings: Settings) -> faust.SASLCredentials | None:
    """The worker role's SCRAM login for aiokafka (None: an anonymous broker)."""
    creds = settings.credentials()
    if creds is None:
        return None
    return faust.SASLCredentials(username=creds.kafka.username, password=creds.kafka.password,
                                 mechanism=creds.kafka.mechanism)


WorkerPart = Literal["coordinator", "tools", "inference"]
WORKER_PARTS: Final[tuple[WorkerPart, ...]] = ("coordinator", "tools", "inference")


def worker_parts(role: str) -> tuple[WorkerPart, ...]:
    """What a worker runs: only its part when started as one part's role (least privilege:
    a tool executor's login cannot answer or read requests), all three otherwise."""
    return tuple(p for p in WORKER_PARTS if p == role) or WORKER_PARTS


def worker_app_id(app_id: str, parts: tuple[WorkerPart, ...]) -> str:
    """The Faust app id, hence consumer group: a coordinator's is the stack's (its tables'
    changelogs are named after it); executors run apart form a group of their own, since
    Faust assigns partitions as if every member of a group ran the same agents."""
    return app_id if "coordinator" in parts else f"{app_id}-{parts[0]}"


def create_app(settings: Settings, worker_name: str,
               parts: tuple[WorkerPart, ...] = WORKER_PARTS) -> faust.App:
    return faust.App(
        worker_app_id(settings.app_id, parts),
        broker=[f"kafka://{hp}" for hp in settings.bootstrap_servers.split(",")],
        broker_credentials=faust_credentials(settings),
        store="rocksdb://",
        datadir=str(settings.state_dir / "faust" / worker_name),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.topic_replication_factor,
        table_standby_replicas=0,
        consumer_auto_offset_reset="earliest",
        web_host="127.0.0.1",
        web_bind=settings.worker_web_bind,
        web_port=settings.worker_web_port,
        producer_acks=-1,
        producer_max_request_size=settings.kafka_max_message_bytes,
        stream_buffer_maxsize=settings.worker_stream_buffer,
        broker_max_poll_records=settings.worker_max_poll_records,
        broker_session_timeout=settings.worker_session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.worker_session_timeout_s / 3),
    )


def raw_topic(app: faust.App, *names: str) -> faust.TopicT:
    """Values are Avro single-object bytes that we decode ourselves, so a malformed message
    reaches our code (and the DLQ) instead of crashing Faust's deserialiser."""
    return app.topic(*names, key_type=bytes, value_type=bytes,
                     key_serializer="raw", value_serializer="raw")


@dataclass(frozen=True)
class WorkerTopics:
    coordinator: faust.TopicT
    """Interactive requests and every step result and wake-up: the coordinator's stream."""
    batch_requests: faust.TopicT
    # One agent per lane: a full batch lane blocks only its own stream (flow/dispatch.py).
    inference_interactive: faust.TopicT
    inference_batch: faust.TopicT
    tools: faust.TopicT


def create_topics(app: faust.App) -> WorkerTopics:
    return WorkerTopics(
        coordinator=raw_topic(app, REQUESTS_INTERACTIVE.name, RESULTS.name),
        batch_requests=raw_topic(app, REQUESTS_BATCH.name),
        inference_interactive=raw_topic(app, INFERENCE_REQUESTS.name),
        inference_batch=raw_topic(app, INFERENCE_REQUESTS_BATCH.name),
        tools=raw_topic(app, TOOL_REQUESTS.name),
    )


@dataclass(frozen=True)
class WorkerTables:
    conversations: Any
    """Conversation id -> the conversation's state (the coordinator is its only writer)."""
    request_dedup: Any
    """Tenant, conversation and idempotency key -> the request's dedup entry."""


def create_tables(app: faust.App, settings: Settings) -> WorkerTables:
    def options() -> dict[str, object]:
        """A fresh dict per table (faust pops keys from it); RocksDB's default block cache
        is 2 GiB per partition database, far too much for a laptop or a 24 GiB CI box."""
        return {"driver": "rocksdict",
                "block_cache_size": settings.rocksdb_block_cache_mb * 1024 * 1024}

    return WorkerTables(
        conversations=app.Table(CONVERSATIONS_TABLE, default=None,
                                partitions=settings.partitions, options=options()),
        request_dedup=app.Table(DEDUP_TABLE, default=None, partitions=settings.partitions,
                                options=options()),
    )


def add_pages(app: faust.App, worker_name: str, recovered: Any) -> None:
    """``/ready`` (200 once the worker has partitions and recovered tables) and
    ``/metrics`` (Prometheus), so an operator can alert on a cache that silently turned
    into misses. ``recovered()`` comes from the Faust fence (it reads Faust internals)."""

    async def ready(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        done = bool(recovered())
        assigned = app.consumer.assignment() if done else set()
        body = {"worker": worker_name, "recovered": done, "rebalancing": app.rebalancing,
                "partitions": sorted(tp.partition for tp in assigned
                                     if tp.topic == RESULTS.name)}
        return web.json(body, status=200 if done and not app.rebalancing else 503)

    async def metrics(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        # In a header: aiohttp refuses a content_type argument that carries a charset.
        return web.bytes(generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.page("/ready")(ready)
    app.page("/metrics")(metrics)
