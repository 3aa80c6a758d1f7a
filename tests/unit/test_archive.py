"""The cold archive's rules: finished requests only, filed by their answer's tenant and day,
checkpoints that resume and never double a row, files any fsspec URL can hold."""

from __future__ import annotations

import json
import random
import uuid
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clawstream.schemas.names import AGENT_ANSWER, AGENT_EVENT, AGENT_REQUEST, DEAD_LETTER
from clawstream.streams.archive import (
    NO_TENANT,
    TP,
    Answered,
    Archive,
    Batch,
    Checkpoint,
    Place,
    Run,
    State,
    archive,
    day,
    sort_out,
)
from clawstream.streams.trace import Found

NOW = 1_750_000_000_000  # 2025-06-15 15:06:40 UTC
HOUR = 3_600_000
GRACE = 2 * HOUR
REQUESTS: TP = ("agent.requests.interactive", 0)
EVENTS: TP = ("agent.events", 0)
ANSWERS: TP = ("agent.answers", 0)


class Logs:
    """Topic-partitions as lists (offset = index) and a reader over them."""

    def __init__(self, rnd: random.Random | None = None) -> None:
        self.logs: dict[TP, list[Found]] = {}
        self.rnd = rnd

    def add(self, tp: TP, schema: str, at_ms: int = NOW - HOUR, **record: Any) -> Found:
        log = self.logs.setdefault(tp, [])
        found = Found(tp[0], tp[1], len(log), at_ms, schema, record)
        log.append(found)
        return found

    def request(self, rid: str, tenant: str = "acme", at_ms: int = NOW - HOUR) -> None:
        self.add(REQUESTS, AGENT_REQUEST, at_ms, request_id=rid, tenant_id=tenant,
                 text="mail ann@example.org")
        self.add(EVENTS, AGENT_EVENT, at_ms, request_id=rid, event_type="step_issued")

    def answer(self, rid: str, tenant: str = "acme", at_ms: int = NOW - HOUR) -> None:
        self.add(ANSWERS, AGENT_ANSWER, at_ms, request_id=rid, tenant_id=tenant, text="done")

    def marks(self) -> dict[TP, tuple[int, int]]:
        return {tp: (0, len(log)) for tp, log in self.logs.items()}

    def read(self, ranges: Mapping[TP, tuple[int, int]]) -> list[Found]:
        """In order, or shuffled with ``rnd``: decisions must not depend on the order."""
        found = [f for tp, (start, end) in ranges.items() for f in self.logs[tp][start:end]]
        if self.rnd is not None:
            self.rnd.shuffle(found)
        return found


def run(logs: Logs, state: State | None = None, now_ms: int = NOW,
        ends: Mapping[TP, int] | None = None, grace_ms: int = GRACE) -> Batch:
    """One run, pure: what :func:`archive` decides without reading or writing files."""
    ends = ends or {tp: end for tp, (_, end) in logs.marks().items()}
    state = (state or State()).following(Run(ends, now_ms))
    return sort_out(logs.read(state.ranges({})), state, grace_ms)


def filed(batch: Batch) -> dict[tuple[str | None, str], list[tuple[str, int]]]:
    """(tenant, day) -> the (topic, offset) of each record filed there."""
    out: dict[tuple[str | None, str], list[tuple[str, int]]] = {}
    for place, rows in batch.files.items():
        out.setdefault((place.tenant, place.day), []).extend((f.topic, f.offset) for f in rows)
    return {k: sorted(v) for k, v in out.items()}


def test_a_finished_request_is_filed_under_its_answers_tenant_and_day() -> None:
    logs = Logs()
    logs.request("r1", at_ms=NOW - 20 * HOUR)  # the day before its answer
    logs.answer("r1", at_ms=NOW - HOUR)
    batch = run(logs)
    assert filed(batch) == {("acme", "2025-06-15"): [
        ("agent.answers", 0), ("agent.events", 0), ("agent.requests.interactive", 0)]}
    assert (batch.finished, batch.waiting, batch.given_up) == (1, 0, 0)
    assert batch.state.checkpoint(EVENTS) == Checkpoint(end=1)
    assert batch.state.answered["r1"] == Answered("acme", "2025-06-15", NOW - HOUR)


def test_an_unfinished_request_waits_and_its_records_are_archived_once_it_is_answered() -> None:
    logs = Logs()
    logs.request("slow")
    logs.request("quick")
    logs.answer("quick")
    first = run(logs)
    assert (first.finished, first.waiting, first.waiting_records) == (1, 1, 2)
    assert {f.record["request_id"] for rows in first.files.values()  # type: ignore[index]
            for f in rows} == {"quick"}
    assert first.state.checkpoint(EVENTS) == Checkpoint(end=2, waiting=frozenset({0}))
    assert first.state.checkpoint(EVENTS).start() == 0  # not past the waiting record

    logs.add(EVENTS, AGENT_EVENT, request_id="slow", event_type="step_completed")
    logs.answer("slow")
    second = run(logs, first.state)
    # "quick"'s event at offset 1 is read again and skipped: it is archived.
    assert filed(second) == {("acme", "2025-06-15"): [
        ("agent.answers", 1), ("agent.events", 0), ("agent.events", 2),
        ("agent.requests.interactive", 0)]}
    assert second.state.checkpoint(EVENTS) == Checkpoint(end=3)
    assert run(logs, second.state).records == 0


def test_records_of_no_request_are_archived_at_once_under_their_own_tenant() -> None:
    logs = Logs()
    logs.add(EVENTS, AGENT_EVENT, request_id=None, event_type="canary_set")
    logs.add(("agent.dlq", 0), DEAD_LETTER, request_id=None, tenant_id="acme")
    assert filed(run(logs)) == {(None, "2025-06-15"): [("agent.events", 0)],
                                ("acme", "2025-06-15"): [("agent.dlq", 0)]}


def test_a_request_unanswered_past_the_grace_is_archived_as_it_stands() -> None:
    logs = Logs()
    logs.request("lost", tenant="acme", at_ms=NOW - GRACE - 1)
    logs.add(EVENTS, AGENT_EVENT, NOW - GRACE - 1, request_id="orphan")  # its request is gone
    batch = run(logs)
    assert filed(batch) == {("acme", "2025-06-15"): [("agent.events", 0),
                                                     ("agent.requests.interactive", 0)],
                            (None, "2025-06-15"): [("agent.events", 1)]}
    assert (batch.given_up, batch.finished, batch.waiting) == (2, 0, 0)


def test_a_late_record_joins_its_archived_answer_while_it_is_remembered() -> None:
    logs = Logs()
    logs.request("r1", tenant="acme", at_ms=NOW - 30 * HOUR)
    logs.answer("r1", tenant="acme", at_ms=NOW - 30 * HOUR)  # 2025-06-14
    first = run(logs, now_ms=NOW - 29 * HOUR)
    logs.add(("agent.results", 0), "clawstream.StepResult", NOW - 29 * HOUR, request_id="r1")
    second = run(logs, first.state, now_ms=NOW - 29 * HOUR)
    assert filed(second) == {("acme", "2025-06-14"): [("agent.results", 0)]}
    assert run(logs, second.state).state.answered == {}  # forgotten after the grace


def test_a_file_is_named_by_its_partition_source_and_offsets() -> None:
    place = Place("acme/eu one", "2025-06-15", "agent.events", 3)
    assert place.path([9, 4, 7]) == ("tenant=acme%2Feu%20one/day=2025-06-15/"
                                      "agent.events-3-4-9.parquet")
    assert Place(None, "2025-06-15", "agent.dlq", 0).path([1]).startswith(
        f"tenant={NO_TENANT}/")
    assert day(NOW) == "2025-06-15" and day(0) == "1970-01-01"


def test_the_state_round_trips_through_json() -> None:
    state = State({EVENTS: Checkpoint(7, frozenset({2, 5}))},
                  {"r1": Answered("acme", "2025-06-15", NOW)},
                  Run({EVENTS: 9, ANSWERS: 4}, NOW))
    assert State.from_json(state.to_json()) == state
    assert State.from_json(State().to_json()) == State()


def test_a_checkpoint_past_its_partitions_end_starts_afresh_and_retention_losses_count() -> None:
    state = State({EVENTS: Checkpoint(50), ANSWERS: Checkpoint(10, frozenset({3, 8}))})
    following = state.following(Run({EVENTS: 5, ANSWERS: 12}, NOW))
    assert following.checkpoint(EVENTS) == Checkpoint()  # the topic was made again
    assert following.ranges({ANSWERS: 5}) == {EVENTS: (0, 5), ANSWERS: (5, 12)}
    assert following.lost({ANSWERS: 5}) == 1  # waiting offset 3 was deleted
    assert Checkpoint(10).lost(14) == 4


@st.composite
def histories(draw: st.DrawFn) -> tuple[Logs, dict[TP, int], dict[str, Answered]]:
    """Requests (some never answered) and records of no request, interleaved at random over
    a few topic-partitions an hour apart (so answers fall on different days), and a cut per
    partition where the first run stops reading."""
    items: list[tuple[str | None, TP, str]] = []
    for i in range(draw(st.integers(1, 6))):
        topics = st.sampled_from([REQUESTS, EVENTS, ("agent.events", 1)])
        items += [(f"r{i}", draw(topics), AGENT_EVENT) for _ in range(draw(st.integers(1, 4)))]
        if draw(st.booleans()):
            items.append((f"r{i}", ANSWERS, AGENT_ANSWER))
    items += [(None, EVENTS, AGENT_EVENT)] * draw(st.integers(0, 2))
    logs, answers = Logs(), {}
    for hour, (rid, tp, schema) in enumerate(draw(st.permutations(items))):
        at_ms = NOW - 30 * HOUR + hour * HOUR
        logs.add(tp, schema, at_ms, request_id=rid, tenant_id=f"t-{rid}")
        if schema == AGENT_ANSWER and rid is not None:
            answers.setdefault(rid, Answered(f"t-{rid}", day(at_ms), at_ms))
    cuts = {tp: draw(st.integers(0, len(log))) for tp, log in logs.logs.items()}
    return logs, cuts, answers


@settings(max_examples=300, deadline=None)
@given(histories(), st.randoms())
def test_two_runs_archive_every_record_of_a_finished_request_exactly_once(
        history: tuple[Logs, dict[TP, int], dict[str, Answered]], rnd: random.Random) -> None:
    logs, cuts, answers = history
    logs.rnd = rnd
    first = run(logs, ends=cuts, grace_ms=100 * HOUR)  # nothing waits that long here
    second = run(logs, first.state, grace_ms=100 * HOUR)
    written = Counter((f.topic, f.partition, f.offset) for batch in (first, second)
                      for rows in batch.files.values() for f in rows)
    for tp, log in logs.logs.items():
        for f in log:
            rid = f.record["request_id"]  # type: ignore[index]
            expected = 1 if rid is None or rid in answers else 0
            assert written[(*tp, f.offset)] == expected, (f, rid)
    for batch in (first, second):
        for place, rows in batch.files.items():
            for f in rows:
                rid = f.record["request_id"]  # type: ignore[index]
                if rid is not None:
                    assert (place.tenant, place.day) == (answers[rid].tenant, answers[rid].day)
    paths = [place.path(f.offset for f in rows) for batch in (first, second)
             for place, rows in batch.files.items()]
    assert len(paths) == len(set(paths))  # no file of the first run overwritten
    unanswered = sum(f.record["request_id"] not in answers  # type: ignore[index]
                     and f.record["request_id"] is not None  # type: ignore[index]
                     for log in logs.logs.values() for f in log)
    assert second.waiting_records == unanswered


def rows_of(url: str) -> list[dict[str, Any]]:
    from fsspec.core import url_to_fs

    fs, root = url_to_fs(url)
    return ds.dataset(root, filesystem=fs, partitioning="hive").to_table().to_pylist()


def test_the_archive_reads_back_as_a_hive_partitioned_dataset_masked(tmp_path: Path) -> None:
    logs = Logs()
    logs.request("r1", tenant="acme")
    logs.answer("r1", tenant="acme")
    logs.request("r2", tenant="globex")
    logs.answer("r2", tenant="globex")
    url = str(tmp_path / "archive")
    report = archive(Archive(url), logs.marks(), logs.read, NOW, GRACE)
    assert len(report.paths) == 6 and not report.resumed and report.lost == 0
    rows = ds.dataset(url, partitioning="hive").to_table().to_pylist()  # the path as is
    assert sorted((r["tenant"], r["day"], r["schema"]) for r in rows) == sorted(
        (tenant, "2025-06-15", schema) for tenant in ("acme", "globex")
        for schema in (AGENT_REQUEST, AGENT_EVENT, AGENT_ANSWER))
    assert {r["request_id"] for r in rows if r["tenant"] == "acme"} == {"r1"}
    requests = [json.loads(r["record_json"]) for r in rows if r["schema"] == AGENT_REQUEST]
    assert {r["text"] for r in requests} == {"mail [email]"}  # masked unless raw
    raw_url = str(tmp_path / "raw")
    archive(Archive(raw_url), logs.marks(), logs.read, NOW, GRACE, raw=True)
    assert "mail ann@example.org" in {json.loads(r["record_json"]).get("text")
                                 for r in rows_of(raw_url)}


def test_a_rerun_over_the_same_range_writes_the_same_files_and_never_doubles_a_row(
        tmp_path: Path) -> None:
    logs = Logs()
    logs.request("r1")
    logs.answer("r1")
    store = Archive(str(tmp_path / "archive"))
    first = archive(store, logs.marks(), logs.read, NOW, GRACE)
    assert archive(store, logs.marks(), logs.read, NOW, GRACE).paths == []  # nothing new
    store.fs.rm(f"{store.root}/_checkpoints", recursive=True)  # progress lost: all again
    again = archive(store, logs.marks(), logs.read, NOW, GRACE)
    assert sorted(again.paths) == sorted(first.paths)  # overwritten, not added
    assert len(rows_of(store.url)) == 3


def test_any_fsspec_url_holds_it_and_a_run_that_stopped_is_repeated_as_it_was() -> None:
    url = f"memory://archive-{uuid.uuid4().hex}"
    logs = Logs()
    logs.request("r1")
    logs.answer("r1")
    logs.request("r2")
    store = Archive(url)

    def broken(ranges: Mapping[TP, tuple[int, int]]) -> list[Found]:
        raise ConnectionError("the broker went away")

    with pytest.raises(ConnectionError):
        archive(store, logs.marks(), broken, NOW, GRACE)
    assert store.load().run == Run({tp: end for tp, (_, end) in logs.marks().items()}, NOW)
    logs.answer("r2")  # after the stopped run's ends: the repeat does not read it
    repeated = archive(store, logs.marks(), logs.read, NOW + HOUR, GRACE)
    assert repeated.resumed and repeated.batch.finished == 1 and repeated.batch.waiting == 1
    assert store.load().run is None
    rest = archive(store, logs.marks(), logs.read, NOW + HOUR, GRACE)
    assert not rest.resumed and rest.batch.finished == 1
    rows = rows_of(url)
    assert Counter((r["topic"], r["offset"]) for r in rows) == Counter(
        (f.topic, f.offset) for log in logs.logs.values() for f in log)
    assert all(r["tenant"] == "acme" for r in rows)
