"""``clawstream archive`` on the real stack: finished requests' records land in the Parquet
archive once each, under their tenant and their answer's day; a request still running waits
for the next run, and a run over nothing new doubles nothing."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, cast

import pyarrow.dataset as ds
import pytest
from typer.testing import CliRunner

from clawstream.cli.app import app
from clawstream.config import Settings
from clawstream.schemas.names import AGENT_ANSWER
from clawstream.streams.archive import day
from clawstream.streams.trace import TRACE_TOPICS, partitions_of, read_range
from tests.integration.flow import (
    answer_to,
    events_of,
    has_event,
    script,
    script_marker,
    send,
)

pytestmark = pytest.mark.integration

Where = tuple[str, int, int]
"""(topic, partition, offset)."""


def archive_to(url: str) -> str:
    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["archive", "--url", url])
    assert result.exit_code == 0, result.output
    return result.output


def on_topics(settings: Settings, request: dict[str, Any]) -> set[Where]:
    """Where the request's records are on the topics now."""
    ranges = partitions_of(settings.bootstrap_servers, request["conversation_id"], TRACE_TOPICS)
    return {(f.topic, f.partition, f.offset)
            for f in read_range(settings.bootstrap_servers, ranges,
                                request["created_at_ms"] - 5000)
            if cast(dict[str, Any], f.record).get("request_id") == request["request_id"]}


def archived(url: str) -> list[dict[str, Any]]:
    rows = ds.dataset(url, partitioning="hive").to_table().to_pylist()
    assert all(n == 1 for n in Counter(
        (r["topic"], r["partition"], r["offset"]) for r in rows).values()), "a row doubled"
    return rows


def check_archived_once(url: str, request: dict[str, Any], expected: set[Where]) -> None:
    """Every record the request had on the topics is in the archive, once, under its tenant
    and its answer's day, masked."""
    rows = [r for r in archived(url) if r["request_id"] == request["request_id"]]
    assert expected <= {(r["topic"], r["partition"], r["offset"]) for r in rows}
    [answer] = [r for r in rows if r["schema"] == AGENT_ANSWER]
    assert {(r["tenant"], r["day"]) for r in rows} == {(request["tenant_id"],
                                                        day(answer["timestamp_ms"]))}
    assert not any("ann@example.org" in r["record_json"] for r in rows)


def test_finished_requests_are_archived_once_and_a_running_one_waits_for_the_next_run(
        worker: Settings, tmp_path: Path) -> None:
    marker = script_marker()
    done = [send(worker, agent="chat", conversation_id=f"ar{i}-{marker[-8:]}",
                 text="Say hello. Mail ann@example.org.", tenant_id=f"archive-{i}")
            for i in range(2)]
    for request in done:
        assert answer_to(worker, request)["status"] == "ok"
    script(worker, marker, {"text": "late but here", "delay_ms": 12000})
    running = send(worker, agent="assistant", conversation_id=f"ar-{marker[-8:]}",
                   text=f"Take your time. Mail ann@example.org. {marker}",
                   tenant_id="archive-late")
    events_of(worker, running["conversation_id"], until=has_event("step_issued"))
    before = {r["request_id"]: on_topics(worker, r) for r in done}
    url = str(tmp_path / "archive")

    out = archive_to(url)
    assert "unfinished request(s)" in out and f"-> {url}" in out
    for request in done:
        check_archived_once(url, request, before[request["request_id"]])
    assert not [r for r in archived(url) if r["request_id"] == running["request_id"]]

    assert answer_to(worker, running)["status"] == "ok"
    finished = on_topics(worker, running)
    archive_to(url)
    check_archived_once(url, running, finished)
    rows = archived(url)
    archive_to(url)  # nothing new of ours: nothing of ours written again
    ours = {r["request_id"] for r in [*done, running]}
    assert sorted((r["topic"], r["partition"], r["offset"]) for r in archived(url)
                  if r["request_id"] in ours) == sorted(
        (r["topic"], r["partition"], r["offset"]) for r in rows if r["request_id"] in ours)
    for request in done:
        check_archived_once(url, request, before[request["request_id"]])
