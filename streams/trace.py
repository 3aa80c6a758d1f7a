"""A request's timeline rebuilt from the topics alone (``clawstream trace``).

Why from the topics: they are the system of record (every request, step result, decision,
retry, dead letter and answer is an event), so a trace needs no tracing backend and works
for a request that never finished. Why fast on a big topic: everything about a conversation
lives on the one partition its key hashes to, on every conversation-scoped topic, and the
broker's time index (``offsets_for_times``) finds where a time starts; so a trace reads that
partition of each topic from ``since_ms`` to the end it had when the trace began, and nothing
else. Only a trace by request id alone, without its conversation, has to look through the
request topics' partitions first (from the same time on).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from confluent_kafka import Consumer, Message, TopicPartition

from clawstream.schemas import DecodeError, decode
from clawstream.schemas.names import (
    AGENT_ANSWER,
    AGENT_EVENT,
    AGENT_REQUEST,
    DEAD_LETTER,
    STEP_RESULT,
)
from clawstream.schemas.records import (
    AgentAnswer,
    AgentEvent,
    AgentRequest,
    DeadLetter,
    StepResult,
    WireRecord,
)
from clawstream.streams.subscriber import consumer, key_partition
from clawstream.streams.topics import (
    ANSWERS,
    DLQ,
    EVENTS,
    REQUESTS_BATCH,
    REQUESTS_INTERACTIVE,
    RESULTS,
)
from clawstream.streams.tracecontext import Headers

TRACE_TOPICS = (REQUESTS_INTERACTIVE.name, REQUESTS_BATCH.name, EVENTS.name, RESULTS.name,
                ANSWERS.name, DLQ.name)
"""Where a request's story is: its request, the audit events (decisions, issues, retries,
timeouts), the step results (times, cache, tokens, cost), the answer, dead letters."""
REQUEST_TOPICS = (REQUESTS_INTERACTIVE.name, REQUESTS_BATCH.name)


@dataclass(frozen=True)
class Found:
    """One decoded record and where it was."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    schema: str
    record: WireRecord
    headers: Headers = field(default_factory=list)


Plan = list[tuple[TopicPartition, int]]
"""(where to start, the offset to stop before) per partition to read."""


def _offsets(reader: Consumer, topic: str, partitions: Sequence[int], at_ms: int
             ) -> dict[int, int]:
    """Per partition, the first offset at or after ``at_ms`` (the broker's time index);
    -1 where nothing is that recent."""
    found = reader.offsets_for_times([TopicPartition(topic, p, at_ms) for p in partitions],
                                     timeout=10.0)
    return {tp.partition: tp.offset for tp in found}


def plan(bootstrap: str, ranges: Mapping[str, Sequence[int]], since_ms: int,
         until_ms: int | None = None) -> Plan:
    """The offsets between ``since_ms`` and ``until_ms`` (default: the end now) of the
    given partitions of each topic; empty ranges left out."""
    reader = consumer(bootstrap)
    try:
        out: Plan = []
        for topic, partitions in ranges.items():
            starts = _offsets(reader, topic, partitions, since_ms)
            ends = _offsets(reader, topic, partitions, until_ms) if until_ms else {}
            for p in partitions:
                _low, high = reader.get_watermark_offsets(TopicPartition(topic, p),
                                                          timeout=10.0)
                start = starts[p] if starts[p] >= 0 else high
                end = ends[p] if ends.get(p, -1) >= 0 else high
                if start < end:
                    out.append((TopicPartition(topic, p, start), end))
        return out
    finally:
        reader.close()


def read_range(bootstrap: str, ranges: Mapping[str, Sequence[int]], since_ms: int,
               conversation_id: str | None = None) -> Iterator[Found]:
    """Every decodable record of the given partitions of each topic, from ``since_ms`` to
    the end each had when the read began (a trace is a snapshot; it does not wait); with
    ``conversation_id``, only that conversation's."""
    return read_plan(bootstrap, plan(bootstrap, ranges, since_ms),
                     conversation_id=conversation_id)


def read_plan(bootstrap: str, todo_plan: Plan, advance: Callable[[int], None] | None = None,
              conversation_id: str | None = None) -> Iterator[Found]:
    """The decodable records of a :func:`plan`; ``advance(n)`` hears of every record read
    (decodable or not), for a progress bar over the plan's total. With ``conversation_id``
    only the records keyed by it (every conversation-scoped record is)."""
    key = conversation_id.encode() if conversation_id is not None else None
    for msg in read_messages(bootstrap, todo_plan, advance, key):
        try:
            name, record = decode(msg.value())
        except DecodeError:
            continue
        yield Found(str(msg.topic()), int(msg.partition() or 0), int(msg.offset() or 0),
                    msg.timestamp()[1], name, record, cast(Headers, msg.headers() or []))


def read_messages(bootstrap: str, todo_plan: Plan,
                  advance: Callable[[int], None] | None = None, key: bytes | None = None
                  ) -> Iterator[Message]:
    """The raw messages of a :func:`plan`, each partition in offset order; with ``key``
    only those with that key, told apart before anything is decoded (a conversation's
    partition holds many others')."""
    if not todo_plan:
        return
    reader = consumer(bootstrap)
    try:
        todo = {(tp.topic, tp.partition): end for tp, end in todo_plan}
        reader.assign([tp for tp, _end in todo_plan])
        idle = 0
        while todo and idle < 50:  # 50 empty polls of 0.2 s: the broker went away
            msg = reader.poll(0.2)
            if msg is None or msg.error():
                idle += 1
                continue
            idle = 0
            topic, partition, offset = str(msg.topic()), int(msg.partition() or 0), int(
                msg.offset() or 0)
            end = todo.get((topic, partition))
            if end is None:
                continue
            if offset + 1 >= end:
                del todo[(topic, partition)]
            if offset >= end:
                continue
            if advance is not None:
                advance(1)
            if key is not None and msg.key() != key:
                continue
            yield msg
    finally:
        reader.close()


def partitions_of(bootstrap: str, conversation_id: str, topics: Sequence[str]
                  ) -> dict[str, list[int]]:
    """The one partition of each topic the conversation's key hashes to."""
    reader = consumer(bootstrap)
    try:
        out = {}
        for topic in topics:
            meta = reader.list_topics(topic, timeout=10.0).topics[topic]
            out[topic] = [key_partition(conversation_id, len(meta.partitions))]
        return out
    finally:
        reader.close()


def all_partitions(bootstrap: str, topics: Sequence[str]) -> dict[str, list[int]]:
    reader = consumer(bootstrap)
    try:
        return {t: list(reader.list_topics(t, timeout=10.0).topics[t].partitions)
                for t in topics}
    finally:
        reader.close()


def watermarks(bootstrap: str, ranges: Mapping[str, Sequence[int]]
               ) -> dict[tuple[str, int], tuple[int, int]]:
    """Per (topic, partition): the first offset it still holds (retention moves it) and its
    end now."""
    reader = consumer(bootstrap)
    try:
        return {(topic, p): reader.get_watermark_offsets(TopicPartition(topic, p), timeout=10.0)
                for topic, partitions in ranges.items() for p in partitions}
    finally:
        reader.close()


def find_conversation(bootstrap: str, request_id: str, since_ms: int) -> str | None:
    """The conversation of a request, from the request topics (every partition, from
    ``since_ms``): the slow path, for a trace given only a request id."""
    for found in read_range(bootstrap, all_partitions(bootstrap, REQUEST_TOPICS), since_ms):
        if (found.schema == AGENT_REQUEST
                and cast(AgentRequest, found.record)["request_id"] == request_id):
            return cast(AgentRequest, found.record)["conversation_id"]
    return None


@dataclass(frozen=True)
class Entry:
    """One line of a timeline."""

    at_ms: int
    what: str
    step_id: str | None
    attempt: int | None
    status: str
    detail: str


@dataclass
class Trace:
    """A request's (or a conversation's) timeline, and the step attempts that were issued
    and have neither a result nor a timeout: in flight when the trace was taken."""

    entries: list[Entry] = field(default_factory=list)
    in_flight: list[tuple[str, int, str]] = field(default_factory=list)
    """(step id, attempt, name) issued and not finished."""
    requests: list[str] = field(default_factory=list)
    answered: bool = False
    """An answer was read: unfinished steps were given up, not running."""


def _request_of(found: Found) -> str | None:
    rec = cast(dict[str, Any], found.record)
    return cast(str | None, rec.get("request_id"))


def _result_detail(r: StepResult) -> str:
    u = r["usage"]
    bits = [f"worker {r['worker']}", f"queue {r['started_at_ms'] - r['issued_at_ms']} ms",
            f"run {r['finished_at_ms'] - r['started_at_ms']} ms"]
    if r["cache_hit"]:
        bits.append("cache hit")
    if u["prompt_tokens"] or u["completion_tokens"]:
        bits.append(f"tokens {u['prompt_tokens']}/{u['completion_tokens']}")
    if u["cost_usd"]:
        bits.append(f"${u['cost_usd']:.6f}")
    if r["error"]:
        bits.append(f"{r['error']['error_class']}: {r['error']['message'][:120]}")
    return ", ".join(bits)


def build(records: Sequence[Found], request_id: str | None = None) -> Trace:
    """The timeline of ``request_id`` (or of every request among ``records``), in time
    order. Pure: the records come from :func:`read_range` or a test."""
    trace = Trace()
    issued: dict[tuple[str, int], str] = {}
    ended: set[tuple[str, int]] = set()
    for found in records:
        rid = _request_of(found)
        if request_id is not None and rid != request_id:
            continue
        if rid and found.schema == AGENT_REQUEST and rid not in trace.requests:
            trace.requests.append(rid)
        if found.schema == AGENT_REQUEST:
            req = cast(AgentRequest, found.record)
            trace.entries.append(Entry(req["created_at_ms"], "request", None, None,
                                       req["lane"], f"agent {req['agent']}, tenant "
                                       f"{req['tenant_id']}, trace {req['trace_id']}"))
        elif found.schema == AGENT_EVENT:
            ev = cast(AgentEvent, found.record)
            detail = dict(ev["detail"])
            attempt = int(detail["attempt"]) if "attempt" in detail else None
            if ev["event_type"] == "step_issued" and ev["step_id"] and attempt is not None:
                issued[(ev["step_id"], attempt)] = detail.get("name", "")
            if ev["event_type"] in ("step_completed", "step_timed_out") and ev["step_id"]:
                ended.add((ev["step_id"], attempt or 0))
            trace.entries.append(Entry(ev["at_ms"], ev["event_type"], ev["step_id"], attempt,
                                       detail.pop("status", ""),
                                       ", ".join(f"{k}={v}" for k, v in sorted(detail.items())
                                                 if v)))
        elif found.schema == STEP_RESULT:
            res = cast(StepResult, found.record)
            ended.add((res["step_id"], res["attempt"]))
            trace.entries.append(Entry(res["finished_at_ms"], f"{res['step_type']} result",
                                       res["step_id"], res["attempt"], res["status"],
                                       _result_detail(res)))
        elif found.schema == AGENT_ANSWER:
            ans = cast(AgentAnswer, found.record)
            trace.answered = True
            u = ans["usage"]
            trace.entries.append(Entry(ans["answered_at_ms"], "answer", None, None,
                                       ans["status"], f"{ans['reason'] or ''} tokens "
                                       f"{u['prompt_tokens']}/{u['completion_tokens']}, "
                                       f"${u['cost_usd']:.6f}".strip()))
        elif found.schema == DEAD_LETTER:
            dl = cast(DeadLetter, found.record)
            trace.entries.append(Entry(dl["at_ms"], "dead letter", dl["step_id"], None,
                                       dl["error_class"], f"{dl['dlq_id']}: {dl['reason']}"))
    trace.entries.sort(key=lambda e: e.at_ms)
    trace.in_flight = [(step, attempt, name) for (step, attempt), name in issued.items()
                       if (step, attempt) not in ended]
    return trace
