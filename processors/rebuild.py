"""A conversation's state rebuilt from its events: the coordinator's rules run again over
what the topics hold, for ``clawstream replay --rebuild`` (the event-sourcing proof).

What the coordinator reads is all on topics: requests (both lanes), step results,
wake-ups and cancels, in its conversation's partition. Replayed here through the functions
the coordinator calls (:mod:`clawstream.processors.handling`), then written as it writes
its tables (the state, the request's dedup entry, the answered requests' entries), the
state comes out as the live tables hold it.

What the coordinator consults besides the events, and how the replay gets it:

- the time: each record's broker timestamp (never before the previous one's). The live
  worker used its clock when it handled the record, a little later, so fields that are
  times (``*_ms``) may differ by that lag and are told apart from real differences;
- the flags (degrade, kill switches, canary routes): their values at each record's time,
  from the control topic's history;
- the entrance gate (Redis rate buckets and spend windows): not replayable, so its verdict
  is taken from the answers topic: a request answered ``rejected`` for a limit is rejected
  again with the same reason;
- the order across topics: the live worker interleaves its topics as it fetches them;
  the replay merges them by timestamp, each partition in offset order.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

from clawstream.config import Settings
from clawstream.processors.canary.routing import with_routes
from clawstream.processors.conversation import Decision, Rules, fresh_dedup, needs_gate
from clawstream.processors.flow.flags import FlagView
from clawstream.processors.handling import decide, settle
from clawstream.processors.keys import dedup_key
from clawstream.processors.state import Conversation, DedupEntry, upgrade
from clawstream.processors.validation import Rejection
from clawstream.schemas.names import AGENT_ANSWER, AGENT_REQUEST, CANCEL, STEP_RESULT, WAKEUP
from clawstream.schemas.records import AgentAnswer, AgentRequest, ControlFlag, ReasonKind
from clawstream.streams.topics import REQUESTS_BATCH, REQUESTS_INTERACTIVE, RESULTS
from clawstream.streams.trace import Found

INPUTS = {REQUESTS_INTERACTIVE.name: (AGENT_REQUEST,), REQUESTS_BATCH.name: (AGENT_REQUEST,),
          RESULTS.name: (STEP_RESULT, WAKEUP, CANCEL)}
"""What the coordinator takes from each of its topics (its ``ACCEPTED``)."""
GATE_KINDS = ("user_rate_limit", "tenant_rate_limit", "tenant_budget", "conversation_budget")
"""Rejections of the entrance gate (``flow.coordination.gate``); the rules reach the other
kinds by themselves."""


@dataclass(frozen=True)
class FlagChange:
    at_ms: int
    name: str
    value: str


def flag_changes(found: Iterable[Found]) -> list[FlagChange]:
    """The control topic's records as changes in time order."""
    return sorted((FlagChange(f.timestamp_ms, cast(ControlFlag, f.record)["name"],
                              cast(ControlFlag, f.record)["value"])
                   for f in found), key=lambda c: c.at_ms)


def flags_at(changes: Sequence[FlagChange], at_ms: int) -> FlagView:
    """The flag values in force at ``at_ms``."""
    values: dict[str, str] = {}
    for change in changes:
        if change.at_ms > at_ms:
            break
        values[change.name] = change.value
    return FlagView(values)


def coordinator_inputs(found: Iterable[Found]) -> Iterator[Found]:
    """The records the coordinator handled, merged by timestamp; each partition keeps its
    offset order (a merge takes from the heads only)."""
    by_partition: dict[tuple[str, int], list[Found]] = {}
    for f in found:
        if f.schema in INPUTS.get(f.topic, ()):
            by_partition.setdefault((f.topic, f.partition), []).append(f)
    for records in by_partition.values():
        records.sort(key=lambda f: f.offset)
    return heapq.merge(*by_partition.values(), key=lambda f: f.timestamp_ms)


@dataclass
class Rebuilt:
    """The state the rules arrive at, and what they answered."""

    conversation: Conversation | None = None
    dedup: dict[str, DedupEntry] = field(default_factory=dict)
    answers: dict[str, str] = field(default_factory=dict)
    """Request id -> the status the rules answered it with."""
    inputs: int = 0
    notes: list[str] = field(default_factory=list)
    """What could not be replayed as it ran (a record the rules raised on)."""


def gate_verdicts(found: Iterable[Found]) -> dict[str, Rejection]:
    """Request id -> the entrance gate's rejection, from the answers it led to."""
    verdicts = {}
    for f in found:
        if f.schema != AGENT_ANSWER:
            continue
        a = cast(AgentAnswer, f.record)
        if a["status"] == "rejected" and a["reason_kind"] in GATE_KINDS:
            verdicts[a["request_id"]] = Rejection(
                cast(ReasonKind, a["reason_kind"]), a["reason"] or "", a["retry_after_s"] or 0.0)
    return verdicts


def rebuild(found: Sequence[Found], rules: Rules, settings: Settings,
            flags: Sequence[FlagChange]) -> Rebuilt:
    """Run the coordinator's rules over a conversation's records (every topic's, as read
    from its partition: inputs are picked out here)."""
    out = Rebuilt()
    verdicts = gate_verdicts(found)
    now = 0
    for f in coordinator_inputs(found):
        now = max(now, f.timestamp_ms)
        view = flags_at(flags, now)
        routed_rules = with_routes(rules, view.values)
        try:
            _step(out, f, now, routed_rules, settings, view, verdicts)
        except Exception as exc:  # the live worker dead-lettered it; say so, go on
            out.notes.append(f"{f.topic}/{f.partition}/{f.offset} ({f.schema}): the rules "
                             f"raised {type(exc).__name__}: {exc}")
        out.inputs += 1
    return out


def _step(out: Rebuilt, f: Found, now: int, rules: Rules, settings: Settings,
          view: FlagView, verdicts: Mapping[str, Rejection]) -> None:
    """What ``Coordinator._handle`` does with a record, its I/O replaced by the records."""
    conv = upgrade(out.conversation) if out.conversation is not None else None
    key = dedup = rejection = None
    if f.schema == AGENT_REQUEST:
        req = cast(AgentRequest, f.record)
        key = dedup_key(req["tenant_id"], req["conversation_id"], req["idempotency_key"])
        dedup = fresh_dedup(out.dedup.get(key), req)
        if needs_gate(dedup, req, rules):
            rejection = verdicts.get(req["request_id"])
    decision = decide(f.schema, f.record, conv, dedup, now, rules,
                      f"{f.topic}/{f.partition}/{f.offset}", rejection)
    _apply(out, settle(decision, rules, settings, view, now).decision, key)


def _apply(out: Rebuilt, decision: Decision, key: str | None) -> None:
    """As ``Coordinator._apply`` writes the tables: the state, the request's dedup entry,
    and every answered request's entry marked answered. Through JSON, as the tables store
    them, so the next record sees what the worker would have read back."""
    if decision.conversation is not None:
        out.conversation = json.loads(json.dumps(decision.conversation))
    if key is not None and decision.dedup is not None:
        out.dedup[key] = json.loads(json.dumps(decision.dedup))
    for a in (o.answer for o in decision.outputs):
        if a is None:
            continue
        out.answers[a["request_id"]] = a["status"]
        answered = dedup_key(a["tenant_id"], a["conversation_id"], a["idempotency_key"])
        entry = out.dedup.get(answered) or DedupEntry(request_id=a["request_id"],
                                                      status="answered", redriven=[])
        if entry["request_id"] == a["request_id"]:
            out.dedup[answered] = {**entry, "status": "answered", "answer_status": a["status"]}


@dataclass(frozen=True)
class Difference:
    path: str
    live: object
    rebuilt: object
    timing: bool
    """A time or a duration (``*_ms``): the replay's clock is the record's timestamp, the
    worker's was its own when it handled the record."""


MISSING = "<absent>"


def differences(live: object, rebuilt: object, path: str = "") -> list[Difference]:
    """Where two JSON-like values differ, by path (``active.steps[0].cmd.step_id``)."""
    if isinstance(live, dict) and isinstance(rebuilt, dict):
        found: list[Difference] = []
        for k in sorted(set(live) | set(rebuilt)):
            found += differences(live.get(k, MISSING), rebuilt.get(k, MISSING),
                                 f"{path}.{k}" if path else str(k))
        return found
    if isinstance(live, list) and isinstance(rebuilt, list):
        found = []
        for i in range(max(len(live), len(rebuilt))):
            found += differences(live[i] if i < len(live) else MISSING,
                                 rebuilt[i] if i < len(rebuilt) else MISSING, f"{path}[{i}]")
        return found
    if live == rebuilt:
        return []
    leaf = path.rsplit(".", 1)[-1].split("[", 1)[0]
    timing = (leaf.endswith("_ms") and isinstance(live, int | float)
              and isinstance(rebuilt, int | float))
    return [Difference(path, live, rebuilt, timing)]
