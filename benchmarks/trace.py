"""``just bench trace``: trace and replay on a topic of a million events.

Fills the conversation-scoped topics of a fresh broker (no workers, no model) with a
seeded synthetic history: ``conversations`` conversations over the last ``hours`` hours,
each a request, ``events_per`` audit events and an answer, with record timestamps spread
over that time, as a busy system would leave them. Then times, median of ``runs`` each:

- ``trace`` of one request with its conversation (its partition of each topic, from 24 h
  back, the CLI's default), and by request id alone (the request topics first);
- ``replay`` of that conversation to JSONL, and of a time range to Parquet, with the
  records/s of the export.

The baseline, in the same run and on the same broker: a plain confluent-kafka read of the
same partitions and ranges that decodes nothing (the floor of any reader), so the figures
read as "x the floor". Printed; the docs record medians of several runs.
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from confluent_kafka import Producer
from rich.progress import Progress
from rich.table import Table

from benchmarks.common import bench_stack, console
from clawstream.config import Settings
from clawstream.schemas import encode
from clawstream.schemas.names import AGENT_ANSWER, AGENT_EVENT, AGENT_REQUEST
from clawstream.schemas.records import empty_usage
from clawstream.streams.kafka_access import client_config
from clawstream.streams.replay import Selection, select, write_jsonl, write_parquet
from clawstream.streams.subscriber import consumer
from clawstream.streams.topics import ANSWERS, EVENTS, REQUESTS_INTERACTIVE
from clawstream.streams.trace import (
    REQUEST_TOPICS,
    TRACE_TOPICS,
    Plan,
    all_partitions,
    build,
    find_conversation,
    partitions_of,
    plan,
    read_plan,
    read_range,
)

EVENT_TYPES = ("step_issued", "step_completed", "decision", "retry_scheduled")


def _request(conversation: str, i: int, at_ms: int) -> dict[str, Any]:
    return {"request_id": f"req-{i}", "idempotency_key": f"idem-{i}",
            "conversation_id": conversation, "tenant_id": f"tenant-{i % 20}",
            "user_id": f"user-{i % 500}", "agent": "researcher", "lane": "interactive",
            "text": f"Where are tool results cached? #{i}", "created_at_ms": at_ms,
            "deadline_ms": at_ms + 60_000, "trace_id": f"{i + 1:032x}", "options": {},
            "messages": [], "tools": [], "parent_request_id": None, "parent_step_id": None,
            "delegation": None}


def _answer(request: dict[str, Any], at_ms: int) -> dict[str, Any]:
    return {"request_id": request["request_id"], "idempotency_key": request["idempotency_key"],
            "conversation_id": request["conversation_id"], "tenant_id": request["tenant_id"],
            "trace_id": request["trace_id"], "agent": "researcher", "agent_version": "v1",
            "status": "ok", "text": "In Redis, under tc:*.", "reason": None,
            "reason_kind": None, "retry_after_s": None,
            "created_at_ms": request["created_at_ms"], "answered_at_ms": at_ms,
            "usage": empty_usage(), "timeline": [], "cache": [], "tool_calls": [],
            "finish_reason": "stop", "parent_request_id": None, "parent_step_id": None,
            "delegation": None}


def _event(request: dict[str, Any], n: int, at_ms: int, rng: random.Random) -> dict[str, Any]:
    return {"event_id": f"{request['request_id']}-e{n}", "event_type": rng.choice(EVENT_TYPES),
            "at_ms": at_ms, "request_id": request["request_id"],
            "conversation_id": request["conversation_id"], "trace_id": request["trace_id"],
            "step_id": f"{request['request_id']}-s{n // 2}", "agent": "researcher",
            "agent_version": "v1", "worker": "worker-0",
            "detail": {"attempt": "1", "name": "search", "status": "ok"}}


def fill(settings: Settings, conversations: int, events_per: int, hours: float,
         seed: int) -> tuple[str, str, int]:
    """Produce the history; returns (a conversation in the middle, its request id, the
    number of records written)."""
    rng = random.Random(seed)
    producer = Producer({**client_config(settings.bootstrap_servers),
                         # The partitioner the publisher and Faust use (streams/publisher.py).
                         "partitioner": "murmur2_random", "linger.ms": 50,
                         "batch.num.messages": 10_000, "compression.type": "lz4",
                         "queue.buffering.max.messages": 1_000_000})
    now = int(time.time() * 1000)
    span_ms = int(hours * 3_600_000)
    written = 0
    per = events_per + 2
    with Progress(console=console) as progress:
        task = progress.add_task("filling", total=conversations * per)
        for i in range(conversations):
            start = now - span_ms + span_ms * i // conversations
            conversation = f"conv-{seed}-{i}"
            request = _request(conversation, i, start)
            out = [(REQUESTS_INTERACTIVE.name, AGENT_REQUEST, request, start)]
            for n in range(events_per):
                at = start + n * 20
                out.append((EVENTS.name, AGENT_EVENT, _event(request, n, at, rng), at))
            end = start + events_per * 20
            out.append((ANSWERS.name, AGENT_ANSWER, _answer(request, end), end))
            for topic, schema, record, at in out:
                while True:
                    try:
                        producer.produce(topic, encode(schema, record),
                                         conversation.encode(), timestamp=at)
                        break
                    except BufferError:
                        producer.poll(0.5)
                written += 1
            producer.poll(0)
            progress.advance(task, per)
        producer.flush(120)
    middle = conversations // 2
    return f"conv-{seed}-{middle}", f"req-{middle}", written


def floor_read(settings: Settings, todo: Plan) -> int:
    """Read ``todo`` with a plain consumer, decoding nothing: the floor of any reader."""
    reader = consumer(settings.bootstrap_servers)
    left = {(tp.topic, tp.partition): end for tp, end in todo}
    count = 0
    try:
        reader.assign([tp for tp, _ in todo])
        while left:
            for msg in reader.consume(10_000, 0.05):
                if msg.error():
                    continue
                where = (str(msg.topic()), int(msg.partition() or 0))
                end = left.get(where)
                if end is None or int(msg.offset() or 0) >= end:
                    continue
                count += 1
                if int(msg.offset() or 0) + 1 >= end:
                    del left[where]
    finally:
        reader.close()
    return count


def timed(runs: int, work: Callable[[], int]) -> tuple[float, int]:
    """Median seconds of ``runs`` runs, and what the last run returned (a count)."""
    times, result = [], 0
    for _ in range(runs):
        t = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def main(conversations: int = 10_000, events_per: int = 100, hours: float = 10.0,
         runs: int = 3, seed: int = 7) -> None:
    with bench_stack(workers=0, inference=False) as settings:
        t = time.monotonic()
        conversation, request_id, written = fill(settings, conversations, events_per, hours,
                                                 seed)
        fill_s = time.monotonic() - t
        console.print(f"[bold]bench trace[/]: {written:,} records in {fill_s:.1f} s "
                      f"({written / fill_s:,.0f}/s), {settings.partitions} partitions, "
                      f"over {hours:g} h")
        bootstrap = settings.bootstrap_servers
        day_ago = int(time.time() * 1000) - 86_400_000
        ranges = partitions_of(bootstrap, conversation, TRACE_TOPICS)
        mine = plan(bootstrap, ranges, day_ago)
        # A time range: one tenth of the history, every partition, from its middle.
        now = int(time.time() * 1000)
        mid = now - int(hours * 1_800_000)
        window = plan(bootstrap, all_partitions(bootstrap, TRACE_TOPICS), mid,
                      mid + int(hours * 360_000))

        def trace_one() -> int:
            found = list(read_range(bootstrap, ranges, day_ago, conversation))
            return len(build(found, request_id).entries)

        def trace_decoding_all() -> int:
            """As trace read before it told conversations apart by key: decode the whole
            partition, keep the request's records."""
            return len(build(list(read_range(bootstrap, ranges, day_ago)), request_id).entries)

        def trace_by_id() -> int:
            found_in = find_conversation(bootstrap, request_id, day_ago)
            assert found_in == conversation
            return trace_one()

        with tempfile.TemporaryDirectory() as tmp:
            def replay_one() -> int:
                with (Path(tmp) / "one.jsonl").open("w") as sink:
                    return write_jsonl(select(read_plan(bootstrap, mine, None, conversation),
                                              Selection(conversation, None, None)), sink)

            def replay_window() -> int:
                return write_parquet(read_plan(bootstrap, window), Path(tmp) / "w.parquet")

            span = sum(end - tp.offset for tp, end in mine)
            requests_read = sum(end - tp.offset for tp, end in plan(
                bootstrap, all_partitions(bootstrap, REQUEST_TOPICS), day_ago))
            rows = [
                ("trace, with conversation", span, timed(runs, trace_one),
                 timed(runs, lambda: floor_read(settings, mine))),
                ("trace, decoding every record", span, timed(runs, trace_decoding_all),
                 None),
                ("trace, by id alone", span + requests_read,
                 timed(runs, trace_by_id), None),
                ("replay conversation, JSONL", span, timed(runs, replay_one),
                 timed(runs, lambda: floor_read(settings, mine))),
                (f"replay {hours / 10:g} h, Parquet",
                 sum(end - tp.offset for tp, end in window), timed(runs, replay_window),
                 timed(runs, lambda: floor_read(settings, window))),
            ]
    table = Table("what", "read", "median s", "out", "floor s", "x floor", "read/s",
                  title=f"bench trace: {written:,} records, median of {runs}")
    for name, read, (seconds, out), floor in rows:
        table.add_row(name, f"{read:,}", f"{seconds:.2f}", f"{out:,}",
                      "-" if floor is None else f"{floor[0]:.2f}",
                      "-" if floor is None else f"{seconds / floor[0]:.1f}",
                      f"{read / seconds:,.0f}")
    console.print(table)
    console.print("read: records in the partitions and range read; out: trace entries or "
                  "records written; floor: a plain consumer reading the same, decoding "
                  "nothing")


if __name__ == "__main__":
    typer.run(main)
