"""A worker SIGKILLed after the broker has a request's answer and before the state that
answered it is written comes back, and the request keeps its one outcome, on the real
stack.

The coordinator sends an event's outputs, waits for the broker to have them, then writes
the conversation's state and the request's dedup entry; the event's offset is committed
only after those writes reached their changelogs. The kill is made exactly there: the
fault fixtures' audit hook (``fixtures/faults.py``) SIGKILLs the worker the first time the
coordinator raises ``DELIVERED`` with an answer for a ``crash-after-answer-`` conversation.
The supervisor starts the worker again; it recovers the tables from their changelogs (the
state before the step's result), reads the result again and decides the answer again; the
answers topic has it already (``processors/answered.py``), so it is not sent a second time
(an ``answer_already_sent`` event says so). The mutating step's effect is applied once.

In the other order (state first, outputs after: checked by swapping the two in
``Coordinator._apply``, which failed here) the state recovered says answered, the result
read again is ignored, and the answer that never left is never sent: ``bench chaos`` lost
requests so. Without the check of the answers topic, this test saw the answer twice (the
second with a later ``answered_at_ms``)."""

from __future__ import annotations

import json
import uuid

import pytest

from clawstream.config import Settings
from clawstream.deploy.local import worker as worker_proc
from clawstream.streams.topics import ANSWERS
from fixtures import faults
from tests.integration.flow import answer_to, events_of, records_of, redis_client, send

pytestmark = pytest.mark.integration


def test_a_worker_killed_between_the_answer_and_its_state_answers_once(
        worker: Settings) -> None:
    r = redis_client(worker)
    conversation = f"{faults.CRASH_PREFIX}{uuid.uuid4().hex[:8]}"
    before = worker_proc.pid(worker, 0)
    request = send(worker, agent="fault-effect", conversation_id=conversation, text="go",
                   deadline_s=90, options={"args0": json.dumps({"counter": conversation})})
    answer = answer_to(worker, request, timeout_s=120)
    assert answer["status"] == "ok", answer
    assert faults.crash_mark(conversation).exists(), "the crash point was never reached"
    worker_proc.wait_ready(worker, 0)
    assert worker_proc.pid(worker, 0) not in (None, before)  # killed, and started again
    # The result was read again and applied to the state before it: the answer was decided
    # again, found on the log, and not sent again.
    events_of(worker, conversation, timeout_s=120, until=lambda found: any(
        e["event_type"] == "answer_already_sent" for e in found))
    answers = records_of(worker, ANSWERS.name, conversation)
    assert [a["request_id"] for a in answers] == [request["request_id"]], answers
    assert int(r.get(faults.EFFECTS_KEY.format(counter=conversation)) or 0) == 1
