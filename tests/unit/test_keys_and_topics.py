from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clawstream.processors.keys import canonical_json, dedup_key, step_key
from clawstream.streams.topics import (
    ANSWERS,
    CATALOGUE,
    CONTROL_FLAGS,
    CONVERSATIONS_TABLE,
    DAY_MS,
    DEDUP_TABLE,
    DLQ,
    EVENTS,
    RESULTS,
    TOOL_REQUESTS,
    changelog_topics,
    request_topic,
    with_retention,
)

json_values = st.recursive(st.none() | st.integers() | st.text(max_size=8),
                           lambda c: st.dictionaries(st.text(max_size=5), c, max_size=4),
                           max_leaves=10)


@given(st.dictionaries(st.text(max_size=5), json_values, max_size=6))
def test_step_key_ignores_dict_order(value: dict) -> None:
    reordered = dict(reversed(list(value.items())))
    assert step_key("tool", "c1", value) == step_key("tool", "c1", reordered)
    assert canonical_json(value) == canonical_json(reordered)


def test_step_key_shape_and_sensitivity() -> None:
    key = step_key("model", "conv-1", {"request_id": "r", "index": 1})
    step_type, conversation, digest = key.split(":")
    assert (step_type, conversation, len(digest)) == ("model", "conv-1", 16)
    assert key != step_key("model", "conv-1", {"request_id": "r", "index": 2})
    assert key != step_key("tool", "conv-1", {"request_id": "r", "index": 1})


def test_dedup_key_is_scoped_to_tenant_and_conversation() -> None:
    assert dedup_key("t1", "c", "k") != dedup_key("t2", "c", "k")
    assert dedup_key("t1", "c", "k") != dedup_key("t1", "d", "k")


def test_catalogue_names_are_unique_and_conversation_topics_copartitioned() -> None:
    names = [t.name for t in CATALOGUE]
    assert len(names) == len(set(names))
    scoped = {t.partitions(6) for t in CATALOGUE if t.conversation_scoped}
    assert scoped == {6}
    assert CONTROL_FLAGS.compacted and CONTROL_FLAGS.config()["cleanup.policy"] == "compact"
    assert DLQ.partitions(6) == 1


def test_unknown_lane_is_an_error() -> None:
    assert request_topic("batch").name == "agent.requests.batch"
    with pytest.raises(ValueError, match="unknown lane"):
        request_topic("urgent")


def test_precreated_changelogs_are_the_topics_faust_writes_the_tables_to() -> None:
    import faust

    app = faust.App("some-app", store="memory://")
    faust_names = {app.Table(table, partitions=6).changelog_topic.get_topic_name()
                   for table in (CONVERSATIONS_TABLE, DEDUP_TABLE)}
    specs = changelog_topics("some-app")
    assert {s.name for s in specs} == faust_names
    assert all(s.compacted and s.conversation_scoped for s in specs)


def test_the_audit_trail_is_kept_forever_by_default_and_work_queues_a_week() -> None:
    assert ANSWERS.config()["retention.ms"] == EVENTS.config()["retention.ms"] == "-1"
    assert TOOL_REQUESTS.retention_ms == RESULTS.retention_ms == 7 * DAY_MS


def test_retention_settings_override_the_catalogue_by_topic_name() -> None:
    specs = with_retention(CATALOGUE, {"agent.events": 5000, "agent.results": -1})
    by_name = {s.name: s for s in specs}
    assert by_name["agent.events"].config()["retention.ms"] == "5000"
    assert by_name["agent.results"].retention_ms == -1
    assert by_name["agent.answers"] == ANSWERS
    with pytest.raises(ValueError, match=r"unknown topic\(s\) \['agent.event'\]"):
        with_retention(CATALOGUE, {"agent.event": 5000})
