"""The reliability contracts on the real stack, proven by breaking things: fault-injecting
tools (fixtures/faults.py), a model app told to fail (inference/faults.py), real
SIGKILL and SIGTERM of the worker process."""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from clawstream.cli import app as cli
from clawstream.cli.dlq import read_letters, redrive, select
from clawstream.config import Settings
from clawstream.deploy.local import worker as worker_proc
from clawstream.processors.policy import jitter_fraction
from clawstream.schemas import encode
from clawstream.schemas.names import STEP_COMMAND
from clawstream.streams.publisher import Publisher
from clawstream.streams.topics import ANSWERS, RESULTS, TOOL_REQUESTS
from fixtures import faults
from tests.integration.flow import (
    Record,
    answer_to,
    ask,
    await_in_file,
    await_push,
    events_of,
    has_event,
    records_of,
    redis_client,
    same_partition_ids,
    send,
)

pytestmark = pytest.mark.integration


def _cid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _args(**steps: dict[str, Any]) -> dict[str, str]:
    return {name: json.dumps(value) for name, value in steps.items()}


def test_a_tool_failing_once_succeeds_on_retry(worker: Settings) -> None:
    answer = ask(worker, agent="fault-flaky", conversation_id=_cid("flaky"), text="go",
                 options=_args(args0={"fail_attempts": 1, "output": "fine"}))
    assert (answer["status"], answer["text"]) == ("ok", "fine")
    assert [(e["attempt"], e["status"]) for e in answer["timeline"]] == [(1, "error"),
                                                                         (2, "ok")]


def test_a_tool_failing_always_is_dead_lettered_and_answered(worker: Settings) -> None:
    conversation = _cid("dead")
    args = {"fail_attempts": 99, "note": conversation}
    request = send(worker, agent="fault-flaky", conversation_id=conversation, text="go",
                   tenant_id="tenant-dlq", options=_args(args0=args))
    answer = answer_to(worker, request)
    assert answer["status"] == "failed"
    assert "fault_flaky step failed after 2 attempt(s)" in answer["reason"]
    [letter] = select(read_letters(worker.bootstrap_servers),
                      {"conversation_id": conversation})
    assert letter["dlq_id"] in answer["reason"]
    assert (letter["tenant_id"], letter["request_id"]) == ("tenant-dlq", request["request_id"])
    assert letter["error_class"] == "ToolError" and "injected failure" in letter["reason"]
    assert json.loads(json.loads(letter["parameters_json"])["arguments_json"]) == args
    assert letter["prompt_signature"] and letter["step_id"].startswith("tool:")
    attempts = letter["attempts"]
    assert [a["attempt"] for a in attempts] == [1, 2]
    assert attempts[0]["at_ms"] < attempts[1]["at_ms"]
    shown = CliRunner().invoke(cli, ["dlq", "show", letter["dlq_id"]])
    assert shown.exit_code == 0 and "tenant-dlq" in shown.output


def test_model_503_twice_then_ok_backs_off_with_growing_jittered_delays(
        worker: Settings) -> None:
    marker = f"fault-{uuid.uuid4().hex[:8]}"
    httpx.post(f"{worker.serve_url}/faults", json={
        "match": marker, "status": 503, "times": 2, "retry_after_s": 1}).raise_for_status()
    conversation = _cid("model503")
    answer = ask(worker, agent="chat", conversation_id=conversation,
                 text=f"Say hello. ({marker})")
    assert answer["status"] == "ok" and answer["text"]
    assert [(e["attempt"], e["status"]) for e in answer["timeline"]] == [
        (1, "error"), (2, "error"), (3, "ok")]
    events = events_of(worker, conversation)
    retries = [e for e in events if e["event_type"] == "retry_scheduled"]
    issued = [e for e in events if e["event_type"] == "step_issued"]
    assert len(retries) == 2 and len(issued) == 3
    ceilings = [int(e["detail"]["ceiling_ms"]) for e in retries]
    assert ceilings[1] == 2 * ceilings[0]  # the backoff ceiling grows
    for n, (retry, nxt) in enumerate(zip(retries, issued[1:], strict=True), start=1):
        delay, after = int(retry["detail"]["delay_ms"]), int(retry["detail"]["retry_after_ms"])
        assert after == 1000  # the backend's Retry-After is honoured ...
        # ... plus a full-jitter draw below the ceiling
        assert delay - after == int(ceilings[n - 1] * jitter_fraction(retry["step_id"], n))
        assert nxt["at_ms"] - retry["at_ms"] >= delay  # and not re-issued before it


def test_a_hanging_tool_hits_its_budget_and_its_late_result_is_ignored(
        worker: Settings) -> None:
    conversation = _cid("hang")
    hang_s = faults.HANG.timeout_s * 3 + 0.6  # past the 3x budget, before the hard cut
    answer = ask(worker, agent="fault-hang", conversation_id=conversation, text="go",
                 options=_args(args0={"hang_s": hang_s}))
    assert answer["status"] == "ok" and answer["text"] == "answered by attempt 2"
    events = events_of(worker, conversation, until=has_event("step_ignored", attempt="1"))
    timed_out = [e for e in events if e["event_type"] == "step_timed_out"]
    assert [e["detail"]["attempt"] for e in timed_out] == ["1"]
    late = [r for r in records_of(worker, RESULTS.name, conversation) if r.get("attempt") == 1]
    assert late and late[0]["status"] == "ok"  # it did finish, late, and was not used


def test_a_retrying_step_does_not_hold_up_its_partition(worker: Settings) -> None:
    slow, *others = same_partition_ids(_cid("part"), worker.partitions, 5)
    retrying = send(worker, agent="fault-flaky", conversation_id=slow, text="go",
                    options=_args(args0={"fail_attempts": 1, "retry_after_s": 6}))
    events_of(worker, slow, until=has_event("retry_scheduled"))
    quick = [send(worker, agent="fault-flaky", conversation_id=c, text="go",
                  options=_args(args0={"fail_attempts": 0})) for c in others]
    quick_answers = [answer_to(worker, r, timeout_s=60) for r in quick]
    slow_answer = answer_to(worker, retrying, timeout_s=60)
    assert slow_answer["status"] == "ok"
    retry_issued = slow_answer["timeline"][1]["issued_at_ms"]
    assert all(a["status"] == "ok" for a in quick_answers)
    assert max(a["answered_at_ms"] for a in quick_answers) < retry_issued


def _held_mutating_call(worker: Settings) -> tuple[Any, str, str, Record, str]:
    """A fault-effect request whose tool call applied its effect and now holds, mid-call,
    until the test sets its release key: (redis, counter, conversation, request, step id)."""
    r = redis_client(worker)
    counter, conversation = _cid("effect"), _cid("held")
    request = send(worker, agent="fault-effect", conversation_id=conversation, text="go",
                   options=_args(args0={"counter": counter, "hold": True}))
    step_id = await_push(r, faults.STARTED_KEY.format(counter=counter))
    return r, counter, conversation, request, step_id


def test_sigkill_during_a_mutating_call_applies_the_effect_once(worker: Settings) -> None:
    r, counter, conversation, request, step_id = _held_mutating_call(worker)
    assert r.get(faults.EFFECTS_KEY.format(counter=counter)) == "1"
    assert worker_proc.kill(worker, 0)
    r.set(faults.RELEASE_KEY.format(counter=counter), "1")
    worker_proc.start(worker, 0)
    answer = answer_to(worker, request)
    assert answer["status"] == "ok"
    assert r.get(faults.EFFECTS_KEY.format(counter=counter)) == "1"
    calls = int(r.get(faults.CALLS_KEY.format(counter=counter)) or 0)
    assert calls >= 2  # called again after the crash, applied once
    # A redelivery of the step now comes from the ledger: the tool is not called again.
    [command] = [c for c in records_of(worker, TOOL_REQUESTS.name, conversation)
                 if c["step_id"] == step_id][:1]
    with Publisher(worker.bootstrap_servers) as publisher:
        publisher.publish_raw(TOOL_REQUESTS.name, conversation.encode(),
                              encode(STEP_COMMAND, command)).result()
    events_of(worker, conversation, until=has_event("step_ignored"))
    assert int(r.get(faults.CALLS_KEY.format(counter=counter)) or 0) == calls
    assert r.get(faults.EFFECTS_KEY.format(counter=counter)) == "1"


def test_redrive_completes_the_request_and_a_second_redrive_changes_nothing(
        worker: Settings) -> None:
    r = redis_client(worker)
    fixed = f"tool:{_cid('dependency-up')}"  # the tools' own Redis namespace
    conversation = _cid("redrive")
    request = send(worker, agent="fault-flaky", conversation_id=conversation, text="go",
                   options=_args(args0={"fail_until_key": fixed, "output": "recovered"}))
    assert answer_to(worker, request)["status"] == "failed"
    letters = select(read_letters(worker.bootstrap_servers), {"conversation_id": conversation})
    assert len(letters) == 1
    r.set(fixed, "1")  # the operator fixes the dependency
    result = CliRunner().invoke(cli, ["dlq", "redrive", "--filter",
                                      f"conversation={conversation}"])
    assert result.exit_code == 0 and "redrove 1" in result.output
    events_of(worker, conversation, until=has_event("answer_emitted", count=2))
    answers = records_of(worker, ANSWERS.name, conversation)
    assert [(a["request_id"], a["status"]) for a in answers] == [
        (request["request_id"], "failed"), (request["request_id"], "ok")]
    assert answers[1]["text"] == "recovered"
    redrive(worker.bootstrap_servers, letters)
    events = events_of(worker, conversation, until=has_event("request_duplicate"))
    assert sum(e["event_type"] == "request_redriven" for e in events) == 1
    assert len(records_of(worker, ANSWERS.name, conversation)) == 2


def test_a_failing_third_step_compensates_steps_two_and_one_in_that_order(
        worker: Settings) -> None:
    r = redis_client(worker)
    counter = _cid("saga")
    conversation = _cid("saga-conv")
    answer = ask(worker, agent="fault-saga", conversation_id=conversation, text="book",
                 options=_args(args0={"counter": counter, "label": "one"},
                               args1={"counter": counter, "label": "two"},
                               args2={"retryable": False}))
    assert answer["status"] == "failed"
    assert r.lrange(faults.UNDONE_KEY.format(counter=counter), 0, -1) == ["two", "one"]
    assert r.get(faults.EFFECTS_KEY.format(counter=counter)) == "0"
    events = events_of(worker, conversation)
    drafts = [e["step_id"] for e in events if e["event_type"] == "draft_recorded"]
    compensated = [e["detail"]["for_step"] for e in events
                   if e["event_type"] == "compensation_completed"]
    assert compensated == list(reversed(drafts[:2]))
    kinds = [e["event_type"] for e in events]
    assert kinds.index("saga_compensating") < kinds.index("answer_emitted")


def test_sigterm_drains_the_step_in_flight_before_exiting(worker: Settings) -> None:
    r, counter, conversation, request, _ = _held_mutating_call(worker)
    log = worker.log_dir / f"{worker_proc.worker_name(0)}.log"
    log_size = log.stat().st_size
    stopped: list[bool] = []
    stopper = threading.Thread(target=lambda: stopped.append(worker_proc.stop(worker, 0)))
    stopper.start()
    await_in_file(log, log_size, "draining 1 in-flight step")
    r.set(faults.RELEASE_KEY.format(counter=counter), "1")
    stopper.join(60)
    assert stopped == [True], "the worker did not exit after draining"
    results = records_of(worker, RESULTS.name, conversation)
    assert [(x["attempt"], x["status"], x["worker"]) for x in results] == [
        (1, "ok", "worker-0")]  # the draining worker finished and reported the step
    worker_proc.start(worker, 0)
    assert answer_to(worker, request)["status"] == "ok"
    assert r.get(faults.CALLS_KEY.format(counter=counter)) == "1"


def test_a_wedged_worker_replaces_itself_and_every_request_is_answered(
        worker: Settings) -> None:
    r = redis_client(worker)
    counter = _cid("freeze")
    log = worker.log_dir / f"{worker_proc.worker_name(0)}.log"
    log_size = log.stat().st_size
    pid = worker_proc.pid(worker, 0)
    frozen = send(worker, agent="fault-freeze", conversation_id=_cid("frozen"), text="go",
                  options=_args(args0={"counter": counter}))
    await_push(r, faults.STARTED_KEY.format(counter=counter))  # its event loop is blocked now
    behind = send(worker, agent="fault-flaky", conversation_id=_cid("behind"), text="go",
                  options=_args(args0={"fail_attempts": 0, "output": "served"}))
    assert answer_to(worker, behind)["text"] == "served"
    answer = answer_to(worker, frozen)  # its tool command came again, to the new process
    assert answer["status"] == "ok" and answer["text"].startswith("answered by attempt")
    since = log.read_bytes()[log_size:]
    assert b"worker stalled: no progress for 8 s on " in since
    assert b"it is blocked" in since  # the report saw the blocked event loop
    assert worker_proc.pid(worker, 0) == pid  # replaced in place: the pid file stays true
