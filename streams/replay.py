"""Decoded events out of the topics, for analysts: ``clawstream replay`` to JSONL or Parquet.

Why a selection by request: only requests, answers and step records carry the tenant, and
events carry the agent but not the tenant, so "everything of tenant T" or "of agent A" is
"everything of the requests that match", found from the request and answer records first.
One conversation is read from its partition only (see :mod:`clawstream.streams.trace`).

Parquet keeps one flat table for every kind of record: where it was, its schema, the ids an
analyst filters on (request, conversation, tenant, agent) as columns, and the whole decoded
record as JSON (records of different schemas do not share columns), so DuckDB or pandas
read it as is.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from clawstream.schemas.names import AGENT_ANSWER, AGENT_REQUEST
from clawstream.streams.trace import Found

if TYPE_CHECKING:
    import pyarrow as pa


@dataclass(frozen=True)
class Selection:
    """What to keep; None keeps any."""

    conversation_id: str | None = None
    tenant_id: str | None = None
    agent: str | None = None

    def matches_request(self, record: dict[str, Any]) -> bool:
        return ((self.tenant_id is None or record.get("tenant_id") == self.tenant_id)
                and (self.agent is None or record.get("agent") == self.agent))


def select(found: Iterable[Found], selection: Selection) -> Iterator[Found]:
    """The records of the selected conversation and of the requests that match, in the
    order read. Buffers the records whose request is not known yet."""
    rows = list(found)
    if selection.conversation_id is not None:
        rows = [f for f in rows if cast(dict[str, Any], f.record).get("conversation_id")
                == selection.conversation_id]
    if selection.tenant_id is None and selection.agent is None:
        yield from rows
        return
    wanted = {cast(dict[str, Any], f.record)["request_id"] for f in rows
              if f.schema in (AGENT_REQUEST, AGENT_ANSWER)
              and selection.matches_request(cast(dict[str, Any], f.record))}
    for f in rows:
        if cast(dict[str, Any], f.record).get("request_id") in wanted:
            yield f


def _jsonable(value: object) -> object:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError(f"not JSON: {type(value).__name__}")


def _row(f: Found) -> dict[str, Any]:
    return {"topic": f.topic, "partition": f.partition, "offset": f.offset,
            "timestamp_ms": f.timestamp_ms, "schema": f.schema, "record": f.record}


def write_jsonl(found: Iterable[Found], out: IO[str]) -> int:
    """One JSON object per record (bytes as base64); returns how many were written."""
    count = 0
    for f in found:
        out.write(json.dumps(_row(f), default=_jsonable, sort_keys=True) + "\n")
        count += 1
    return count


ID_COLUMNS = ("request_id", "conversation_id", "tenant_id", "agent")


def parquet_table(found: Iterable[Found]) -> pa.Table:
    """The records as the one flat table of the module docstring: the shape every Parquet
    file of ours has (an export, the cold archive), so one query reads them all."""
    import pyarrow as pa

    columns: dict[str, list[Any]] = {name: [] for name in (
        "topic", "partition", "offset", "timestamp_ms", "schema", *ID_COLUMNS, "record_json")}
    for f in found:
        record = cast(dict[str, Any], f.record)
        for name, value in _row(f).items():
            if name != "record":
                columns[name].append(value)
        for name in ID_COLUMNS:
            value = record.get(name)
            columns[name].append(value if isinstance(value, str) else None)
        columns["record_json"].append(json.dumps(record, default=_jsonable, sort_keys=True))
    schema = pa.schema([("topic", pa.string()), ("partition", pa.int32()),
                        ("offset", pa.int64()), ("timestamp_ms", pa.int64()),
                        ("schema", pa.string()), *((n, pa.string()) for n in ID_COLUMNS),
                        ("record_json", pa.string())])
    return pa.table(columns, schema=schema)


def write_parquet(found: Iterable[Found], path: Path) -> int:
    """The records as one Parquet table (see the module docstring); returns the count."""
    import pyarrow.parquet as pq

    table = parquet_table(found)
    pq.write_table(table, path)
    return table.num_rows
