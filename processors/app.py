"""The Faust app: one definition of the worker's topics and RocksDB tables."""

from __future__ import annotations

import os

import faust

from clawstream.config import get_settings
from clawstream.processors import gapless
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

gapless.install()
settings = get_settings()
WORKER_NAME = os.environ.get("CLAWSTREAM_WORKER_NAME", "worker-0")
DATA_DIR = settings.state_dir / "faust" / WORKER_NAME
DATA_DIR.mkdir(parents=True, exist_ok=True)

app = faust.App(
    settings.app_id,
    broker=f"kafka://{settings.bootstrap_servers}",
    store="rocksdb://",
    datadir=str(DATA_DIR),
    topic_partitions=settings.partitions,
    topic_replication_factor=1,
    table_standby_replicas=0,
    consumer_auto_offset_reset="earliest",
    web_host="127.0.0.1",
    web_port=settings.worker_web_port,
    producer_acks=-1,
    stream_buffer_maxsize=settings.worker_stream_buffer,
    broker_max_poll_records=settings.worker_max_poll_records,
    broker_session_timeout=settings.worker_session_timeout_s,
    broker_heartbeat_interval=min(3.0, settings.worker_session_timeout_s / 3),
    Worker="clawstream.processors.lifecycle:ClawstreamWorker",
)


def raw_topic(*names: str) -> faust.TopicT:
    """Values are Avro single-object bytes that we decode ourselves, so a malformed message
    reaches our code (and the DLQ) instead of crashing Faust's deserialiser."""
    return app.topic(*names, key_type=bytes, value_type=bytes,
                     key_serializer="raw", value_serializer="raw")


coordinator_topic = raw_topic(REQUESTS_INTERACTIVE.name, RESULTS.name)
batch_requests_topic = raw_topic(REQUESTS_BATCH.name)
# One agent per lane: a full batch lane blocks only its own stream (processors/flow/dispatch).
inference_interactive_topic = raw_topic(INFERENCE_REQUESTS.name)
inference_batch_topic = raw_topic(INFERENCE_REQUESTS_BATCH.name)
tool_topic = raw_topic(TOOL_REQUESTS.name)


def _rocksdb_options() -> dict[str, object]:
    """A fresh dict per table (faust pops keys from it); RocksDB's default block cache is
    2 GiB per partition database, far too much for a laptop or a 24 GiB CI machine."""
    return {"driver": "rocksdict",
            "block_cache_size": settings.rocksdb_block_cache_mb * 1024 * 1024}


conversations = app.Table(CONVERSATIONS_TABLE, default=None, partitions=settings.partitions,
                          options=_rocksdb_options())
request_dedup = app.Table(DEDUP_TABLE, default=None, partitions=settings.partitions,
                          options=_rocksdb_options())


@app.page("/ready")
async def ready(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
    """200 once the worker has partitions and its tables are recovered."""
    recovery = app.tables.recovery  # type: ignore[attr-defined]
    recovered = recovery.completed.is_set() and not app.in_recovery
    assigned = app.consumer.assignment() if recovered else set()
    body = {"worker": WORKER_NAME, "recovered": recovered, "rebalancing": app.rebalancing,
            "partitions": sorted(tp.partition for tp in assigned if tp.topic == RESULTS.name)}
    return web.json(body, status=200 if recovered and not app.rebalancing else 503)


@app.page("/metrics")
async def metrics(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
    """Prometheus exposition of this worker's counters (cache hits, misses, savings and
    outages), so an operator can alert on a cache that silently turned into misses."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    # In a header: aiohttp refuses a content_type argument that carries a charset.
    return web.bytes(generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})
