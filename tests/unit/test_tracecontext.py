"""W3C ``traceparent`` headers: the request's trace id, one stable parent id per hop."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from clawstream.streams.tracecontext import headers_for, parse, w3c_trace_id


def test_a_uuid_hex_trace_id_is_carried_unchanged_and_each_hop_has_its_own_parent() -> None:
    trace_id = uuid.uuid4().hex
    result = {"trace_id": trace_id, "request_id": "r", "step_id": "s", "attempt": 1}
    first = parse(headers_for("clawstream.StepResult", result))
    retry = parse(headers_for("clawstream.StepResult", {**result, "attempt": 2}))
    assert first is not None and retry is not None
    assert first[0] == retry[0] == trace_id
    assert first[1] != retry[1]
    assert parse(headers_for("clawstream.StepResult", result)) == first  # a redelivery
    assert headers_for("clawstream.ControlFlag", {"name": "x"}) is None


@given(st.text(min_size=1, max_size=80))
def test_any_trace_id_becomes_a_valid_w3c_one(raw: str) -> None:
    header = headers_for("s", {"trace_id": raw})
    parsed = parse(header)
    assert parsed is not None and parsed[0] == w3c_trace_id(raw)
    assert parsed[0] != "0" * 32
