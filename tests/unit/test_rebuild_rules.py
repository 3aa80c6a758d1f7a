"""``replay --rebuild``'s core: the coordinator's rules run again over a conversation's
records arrive at the state a worker wrote, whatever lag the worker handled them with;
flags, gate verdicts and the order across topics come from the records."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from clawstream.config import Settings
from clawstream.processors.conversation import Rules
from clawstream.processors.flow.flags import FlagView
from clawstream.processors.handling import decide, settle
from clawstream.processors.keys import dedup_key
from clawstream.processors.policy import Policy
from clawstream.processors.rebuild import (
    FlagChange,
    coordinator_inputs,
    differences,
    flags_at,
    rebuild,
)
from clawstream.processors.registry import Registry, register_all
from clawstream.processors.state import Conversation
from clawstream.schemas.names import AGENT_ANSWER, AGENT_EVENT, AGENT_REQUEST, STEP_RESULT
from clawstream.schemas.records import AgentRequest, StepCommand, empty_usage
from clawstream.streams.publisher import new_request
from clawstream.streams.topics import ANSWERS, EVENTS, REQUESTS_INTERACTIVE, RESULTS
from clawstream.streams.trace import Found

RULES = Rules(Policy(), register_all(Registry(), ["clawstream.processors.builtin"]))
SETTINGS = Settings()


def _ok_result(cmd: StepCommand, at: int) -> dict[str, Any]:
    return {**{k: cmd[k] for k in ("step_id", "step_index", "step_type", "attempt",
                                   "request_id", "conversation_id", "trace_id",
                                   "issued_at_ms")},
            "status": "ok", "output": f"done {cmd['step_id'][-6:]}", "error": None,
            "worker": "w", "started_at_ms": at, "finished_at_ms": at, "cache_hit": False,
            "model": "m", "backend": "b", "usage": {**empty_usage(), "prompt_tokens": 3,
                                                     "completion_tokens": 2},
            "cache": [], "tool_calls": [], "finish_reason": None, "answer": None,
            "effects": []}


class LiveWorker:
    """A worker's handling of one conversation, written out step by step as the
    coordinator does it, with its clock ``lag`` ms behind each record, and the log it
    leaves: requests and results it read, answers it wrote."""

    def __init__(self, lag: int, flags: FlagView | None = None) -> None:
        self.lag = lag
        self.flags = flags or FlagView({})
        self.conv: Conversation | None = None
        self.dedup: dict[str, Any] = {}
        self.log: list[Found] = []
        self.pending: list[tuple[int, str, Any]] = []  # (timestamp, topic, record)

    def _log(self, topic: str, at: int, schema: str, record: Any) -> None:
        offset = sum(1 for f in self.log if f.topic == topic)
        self.log.append(Found(topic, 0, offset, at, schema, record))

    def request(self, req: AgentRequest, at: int) -> None:
        self.pending.append((at, REQUESTS_INTERACTIVE.name, req))

    def run(self) -> None:
        while self.pending:
            self.pending.sort(key=lambda p: p[0])
            at, topic, record = self.pending.pop(0)
            now = at + self.lag
            self._log(topic, at, STEP_RESULT if topic == RESULTS.name else AGENT_REQUEST,
                      record)
            key = dedup = None
            if topic != RESULTS.name:
                key = dedup_key(record["tenant_id"], record["conversation_id"],
                                record["idempotency_key"])
                dedup = self.dedup.get(key)
            decision = settle(decide(self.log[-1].schema, record, self.conv, dedup, now, RULES,
                                     f"{topic}/0/{self.log[-1].offset}"),
                              RULES, SETTINGS, self.flags, now).decision
            self.conv = json.loads(json.dumps(decision.conversation))
            if key is not None and decision.dedup is not None:
                self.dedup[key] = decision.dedup
            for out in decision.outputs:
                if out.command is not None:  # the step runs and its result comes back
                    self.pending.append((now + 5, RESULTS.name,
                                         _ok_result(out.command, now + 4)))
                if out.answer is not None:
                    self._log(ANSWERS.name, now, AGENT_ANSWER, out.answer)
                    k = dedup_key(out.answer["tenant_id"], out.answer["conversation_id"],
                                  out.answer["idempotency_key"])
                    self.dedup[k] = {**self.dedup[k], "status": "answered",
                                     "answer_status": out.answer["status"]}


@settings(max_examples=25, deadline=None)
@given(lag=st.integers(0, 400), agents=st.lists(st.sampled_from(["chat", "researcher"]),
                                                min_size=1, max_size=4))
def test_finished_conversations_rebuild_to_what_the_worker_wrote(lag: int,
                                                                 agents: list[str]) -> None:
    worker = LiveWorker(lag)
    for i, agent in enumerate(agents):
        worker.request(new_request(agent=agent, conversation_id="c", text=f"q{i}",
                                   deadline_s=60), 1_000 + 3 * i)
    worker.run()
    rebuilt = rebuild(worker.log, RULES, SETTINGS, [])
    assert rebuilt.notes == []
    assert len(rebuilt.answers) == len(agents) and set(rebuilt.answers.values()) == {"ok"}
    assert worker.conv is not None and worker.conv["active"] is None
    # Nothing of a finished conversation depends on when its records were handled.
    assert differences(worker.conv, rebuilt.conversation) == []
    assert differences(worker.dedup, rebuilt.dedup) == []


def test_a_conversation_in_flight_differs_only_in_its_times() -> None:
    worker = LiveWorker(lag=250)
    req = new_request(agent="researcher", conversation_id="c", text="q", deadline_s=60)
    worker.request(req, 1_000)
    worker.run()
    # Cut the log before the last result: the request is still running.
    last = max(i for i, f in enumerate(worker.log) if f.schema == STEP_RESULT)
    partial = worker.log[:last]
    rebuilt = rebuild(partial, RULES, SETTINGS, [])
    assert rebuilt.conversation is not None and rebuilt.conversation["active"] is not None
    found = differences(_replayed_with_lag(partial, 250), rebuilt.conversation)
    assert found and all(d.timing for d in found), found


def _replayed_with_lag(log: list[Found], lag: int) -> Conversation | None:
    """The state a worker with ``lag`` wrote for exactly these records."""
    conv: Conversation | None = None
    dedup = None
    for f in log:
        if f.schema not in (AGENT_REQUEST, STEP_RESULT):
            continue
        now = f.timestamp_ms + lag
        decision = decide(f.schema, f.record, conv, dedup, now, RULES,
                          f"{f.topic}/0/{f.offset}")
        dedup = decision.dedup or dedup
        conv = json.loads(json.dumps(
            settle(decision, RULES, SETTINGS, FlagView({}), now).decision.conversation))
    return conv


def test_a_gate_rejection_is_taken_from_the_answer_it_led_to() -> None:
    req = new_request(agent="chat", conversation_id="c", text="q", deadline_s=60)
    answer = {"request_id": req["request_id"], "status": "rejected",
              "reason_kind": "user_rate_limit", "reason": "user over 1 request/s",
              "retry_after_s": 2.0}
    log = [Found(REQUESTS_INTERACTIVE.name, 0, 0, 1_000, AGENT_REQUEST, req),
           Found(ANSWERS.name, 0, 0, 1_001, AGENT_ANSWER, answer)]  # type: ignore[arg-type]
    rebuilt = rebuild(log, RULES, SETTINGS, [])
    assert rebuilt.answers == {req["request_id"]: "rejected"}
    [entry] = rebuilt.dedup.values()
    assert entry["answer_status"] == "rejected"
    assert rebuilt.conversation is None  # a rejected request leaves no state
    # Without the verdict the request runs: the rebuild shows where that disagrees.
    assert rebuild(log[:1], RULES, SETTINGS, []).answers == {}


def test_flags_apply_from_the_time_they_were_set() -> None:
    changes = [FlagChange(1_000, "degrade", "on"), FlagChange(2_000, "degrade", "off")]
    assert flags_at(changes, 999).degrade is False
    assert flags_at(changes, 1_000).degrade is True
    assert flags_at(changes, 2_500).degrade is False
    worker = LiveWorker(lag=3, flags=FlagView({"degrade": "on"}))
    worker.request(new_request(agent="researcher", conversation_id="c", text="q",
                               deadline_s=60), 1_500)
    worker.run()
    rebuilt = rebuild(worker.log, RULES, SETTINGS, changes)
    assert set(rebuilt.answers.values()) == {"degraded"}
    assert differences(worker.conv, rebuilt.conversation) == []
    # Without the flag's history the rules wait for the step the worker cut: no answer.
    assert rebuild(worker.log, RULES, SETTINGS, []).answers == {}


def test_inputs_keep_each_partitions_order_and_leave_out_what_the_coordinator_never_reads(
) -> None:
    def found(topic: str, offset: int, at: int, schema: str) -> Found:
        return Found(topic, 0, offset, at, schema, {})  # type: ignore[arg-type]

    log = [found(RESULTS.name, 1, 50, STEP_RESULT), found(RESULTS.name, 0, 90, STEP_RESULT),
           found(REQUESTS_INTERACTIVE.name, 0, 60, AGENT_REQUEST),
           found(EVENTS.name, 0, 10, AGENT_EVENT), found(ANSWERS.name, 0, 70, AGENT_ANSWER)]
    order = [(f.topic, f.offset) for f in coordinator_inputs(log)]
    # Offset 0 of the results was produced with a later timestamp (two producers): it is
    # still handled before offset 1, as the worker read it.
    assert order == [(REQUESTS_INTERACTIVE.name, 0), (RESULTS.name, 0), (RESULTS.name, 1)]


def test_a_record_the_rules_raise_on_is_noted_and_the_rest_replayed() -> None:
    req = new_request(agent="chat", conversation_id="c", text="q", deadline_s=60)
    broken = Found(RESULTS.name, 0, 0, 1_001, STEP_RESULT, {"conversation_id": "c"})  # type: ignore[arg-type]
    rebuilt = rebuild([Found(REQUESTS_INTERACTIVE.name, 0, 0, 1_000, AGENT_REQUEST, req),
                       broken], RULES, SETTINGS, [])
    assert rebuilt.inputs == 2 and len(rebuilt.notes) == 1
    assert "agent.results/0/0" in rebuilt.notes[0]
    assert rebuilt.conversation is not None and rebuilt.conversation["active"] is not None


def test_differences_name_the_path_and_tell_times_apart() -> None:
    live = {"a": {"at_ms": 5, "text": "x"}, "items": [1, 2], "gone": 1}
    rebuilt = {"a": {"at_ms": 9, "text": "y"}, "items": [1], "new": 2}
    found = {(d.path, d.timing) for d in differences(live, rebuilt)}
    assert found == {("a.at_ms", True), ("a.text", False), ("items[1]", False),
                     ("gone", False), ("new", False)}
    assert differences({"x": [{"k": 1}]}, {"x": [{"k": 1}]}) == []
