"""Replay's selection (by conversation, tenant, agent) and its JSONL."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from clawstream.schemas.names import AGENT_ANSWER, AGENT_EVENT, AGENT_REQUEST, DEAD_LETTER
from clawstream.streams.replay import Selection, select, write_jsonl, write_parquet
from clawstream.streams.trace import Found


def _f(schema: str, **record: Any) -> Found:
    return Found("t", 0, 0, 0, schema, record)


ROWS = [
    _f(AGENT_EVENT, request_id="r1", conversation_id="c1"),  # before its request is read
    _f(AGENT_REQUEST, request_id="r1", conversation_id="c1", tenant_id="acme", agent="chat"),
    _f(AGENT_REQUEST, request_id="r2", conversation_id="c2", tenant_id="other", agent="chat"),
    _f(AGENT_EVENT, request_id="r2", conversation_id="c2"),
    _f(AGENT_ANSWER, request_id="r3", conversation_id="c1", tenant_id="acme",
       agent="researcher"),
    _f(DEAD_LETTER, request_id="r3", conversation_id="c1", payload=b"\x00\xff"),
]


def ids(selection: Selection) -> list[str]:
    return [f.record["request_id"] for f in select(ROWS, selection)]  # type: ignore[index]


def test_a_tenant_or_agent_keeps_all_records_of_its_requests() -> None:
    assert ids(Selection(tenant_id="acme")) == ["r1", "r1", "r3", "r3"]
    assert ids(Selection(agent="chat")) == ["r1", "r1", "r2", "r2"]
    assert ids(Selection(tenant_id="acme", agent="researcher")) == ["r3", "r3"]
    assert ids(Selection(conversation_id="c2")) == ["r2", "r2"]
    assert len(ids(Selection())) == len(ROWS)


def test_jsonl_round_trips_with_bytes_as_base64() -> None:
    out = io.StringIO()
    assert write_jsonl(ROWS, out) == len(ROWS)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[1]["record"]["tenant_id"] == "acme"
    assert lines[-1]["record"]["payload"] == "AP8="
    assert {line["schema"] for line in lines} == {AGENT_EVENT, AGENT_REQUEST, AGENT_ANSWER,
                                                  DEAD_LETTER}


def test_parquet_round_trips_with_the_ids_as_columns(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    path = tmp_path / "out.parquet"
    assert write_parquet(ROWS, path) == len(ROWS)
    table = pq.read_table(path).to_pylist()
    assert [r["request_id"] for r in table] == [f.record["request_id"]  # type: ignore[index]
                                                for f in ROWS]
    assert table[1]["tenant_id"] == "acme" and table[0]["tenant_id"] is None
    assert json.loads(table[-1]["record_json"])["payload"] == "AP8="
