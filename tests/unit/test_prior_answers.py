"""An answer the answers topic already has is not sent again: what replaces it."""

from __future__ import annotations

from clawstream.processors.answered import without_answers_to
from clawstream.processors.records import Output, about, answer, event
from clawstream.streams.publisher import new_request


def outputs_answering(*texts: str) -> tuple[list[str], list[Output]]:
    """For each text a request, its ``answer_emitted`` event and its answer."""
    ids: list[str] = []
    outputs: list[Output] = []
    for text in texts:
        req = new_request(agent="echo", conversation_id="c-prior", text=text)
        ids.append(req["request_id"])
        outputs += [event("step_completed", 1, about(req)),
                    event("answer_emitted", 2, about(req)),
                    answer(req, "ok", text, None, 3, "v1")]
    return ids, outputs


def test_an_answer_already_sent_becomes_an_event_and_its_answer_emitted_goes() -> None:
    (first, second), outputs = outputs_answering("one", "two")
    kept = without_answers_to(outputs, {first}, 10, "worker-1")
    assert [o.answer["request_id"] for o in kept if o.answer] == [second]
    events = [(e["event_type"], e["request_id"]) for e in (o.event for o in kept) if e]
    assert events == [("step_completed", first), ("answer_already_sent", first),
                      ("step_completed", second), ("answer_emitted", second)]
    already = next(o.event for o in kept
                   if o.event and o.event["event_type"] == "answer_already_sent")
    assert already is not None
    assert (already["worker"], already["detail"], already["at_ms"]) == (
        "worker-1", {"status": "ok"}, 10)


def test_nothing_already_sent_keeps_every_output() -> None:
    _, outputs = outputs_answering("one")
    assert without_answers_to(outputs, set(), 10, "worker-1") == outputs
