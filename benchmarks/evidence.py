"""What a fault benchmark keeps of each run: a loss seen once must be diagnosable later.

The next run purges the stack (topics, tables, logs), so everything a diagnosis needs is
copied into a directory of its own per run, ``build/bench-runs/<bench>-<UTC time>/``,
which no later run touches:

- ``logs/``: every process's log of the stack (workers, supervisors, broker, Redis, Serve);
- ``summary.json``: the counts, the fault schedule as it happened, the lost request ids;
- ``events.jsonl``: every audit event of the run;
- ``lost.json``: per lost request (and per request not answered ok, or that a guard against
  lost state acted on), every record about it, whole and in log order, with
  topic, partition, offset and timestamp: the request (and its redeliveries), its events
  (``detail`` included: a ``step_ignored``'s attempt and ``counted_in_answer``), its step
  commands and results, wake-ups and DLQ letters of its conversation, and every version of
  its conversation's state and dedup entry in the tables' changelogs.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.common import REPO_ROOT, console
from benchmarks.faultload import Record
from clawstream.config import Settings

RUNS_DIR = REPO_ROOT / "build" / "bench-runs"


def run_dir(bench: str) -> Path:
    """A fresh directory for this run of ``bench`` (never one an earlier run wrote)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = RUNS_DIR / f"{bench}-{stamp}"
    n = 1
    while path.exists():
        n += 1
        path = RUNS_DIR / f"{bench}-{stamp}-{n}"
    path.mkdir(parents=True)
    return path


def _conversation_of(key: str) -> str:
    """The conversation a table key is about: the conversations table's key is its id, the
    dedup table's ``tenant|conversation|idempotency key`` (both JSON strings)."""
    try:
        text = json.loads(key)
    except ValueError:
        text = key
    parts = str(text).split("|")
    return parts[1] if len(parts) == 3 else str(text)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=repr))


WATCHED = ("request_resumed", "request_aborted", "answer_already_sent")


def _records(settings: Settings) -> list[dict[str, Any]]:
    """Every record of the coordinator's topics and of its tables' changelogs, decoded."""
    from clawstream.schemas import DecodeError, decode
    from clawstream.streams.subscriber import read_messages
    from clawstream.streams.topics import (
        CONVERSATIONS_TABLE,
        DEDUP_TABLE,
        DLQ,
        EVENTS,
        INFERENCE_REQUESTS,
        REQUESTS_INTERACTIVE,
        RESULTS,
        TOOL_REQUESTS,
    )

    changelogs = [f"{settings.app_id}-{t}-changelog" for t in (CONVERSATIONS_TABLE,
                                                                DEDUP_TABLE)]
    topics = [REQUESTS_INTERACTIVE.name, EVENTS.name, INFERENCE_REQUESTS.name,
              TOOL_REQUESTS.name, RESULTS.name, DLQ.name, *changelogs]
    out: list[dict[str, Any]] = []
    for msg in read_messages(settings.bootstrap_servers, topics, timeout_s=5.0):
        topic, partition, offset, ts = msg.topic(), msg.partition(), msg.offset(), \
            msg.timestamp()[1]
        key, value = msg.key(), msg.value()
        where = {"topic": topic, "partition": partition, "offset": offset, "ts": ts}
        if topic in changelogs:
            out.append({**where, "key": (key or b"").decode(errors="replace"),
                        "value": json.loads(value) if value else None})
            continue
        try:
            name, record = decode(value or b"")
        except DecodeError:
            continue
        out.append({**where, "schema": name, "record": _jsonable(dict(record))})
    return out


def keep(bench: str, settings: Settings, sent: list[Record], answers: dict[str, list[Record]],
         summary: dict[str, Any]) -> Path:
    """Copy the logs and the lost requests' records into a new run directory; returns it."""
    path = run_dir(bench)
    if settings.log_dir.exists():
        shutil.copytree(settings.log_dir, path / "logs", dirs_exist_ok=True)
    lost = {q["request_id"] for q in sent if q["request_id"] not in answers}
    records = _records(settings)
    # Besides the lost: requests not answered ok, and those a guard against lost state
    # acted on (resumed, aborted, an answer not sent again), so a loss or a double that was
    # healed shows too.
    marked = {str(r["record"].get("request_id")) for r in records
              if r.get("schema") and r["record"].get("event_type") in WATCHED}
    chosen = lost | marked | {k for k, v in answers.items() if v[0]["status"] != "ok"}
    conversations = {q["conversation_id"]: q["request_id"] for q in sent
                     if q["request_id"] in chosen}
    trails: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if "key" in r:
            owner = _conversation_of(r["key"])
        else:
            owner = str(r["record"].get("conversation_id"))
            if r["record"].get("request_id") in chosen:
                trails[str(r["record"]["request_id"])].append(r)
                continue
        if owner in conversations:
            trails[conversations[owner]].append(r)
    with (path / "events.jsonl").open("w") as out:  # every event of the run, for patterns
        for r in records:
            if r.get("schema") and r["topic"].endswith("events"):
                out.write(json.dumps({**r["record"], "offset": r["offset"],
                                      "partition": r["partition"]}) + "\n")
    (path / "lost.json").write_text(json.dumps(
        {"lost": sorted(lost), "trails": trails}, indent=1, sort_keys=True))
    (path / "summary.json").write_text(json.dumps(
        {**_jsonable(summary), "lost": sorted(lost), "sent": len(sent),
         "watched": {kind: sum(1 for r in records if r.get("schema")
                               and r["record"].get("event_type") == kind)
                     for kind in WATCHED}}, indent=1))
    console.print(f"evidence kept in {path}")
    return path
