"""The stalled-consumer rule (processors/stall.py): records waiting and no commit for the
timeout, per partition, timed from when they were first seen waiting; recovery progress and
a moving commit start a fresh period."""

from __future__ import annotations

from clawstream.processors.stall import StallRule, first_unhandled

P0, P1 = ("agent.requests.interactive", 0), ("agent.results", 1)


def test_a_partition_with_records_waiting_and_no_commit_stalls_after_the_timeout() -> None:
    rule = StallRule(timeout_s=10)
    assert rule.observe(0, {P0: 5}, {P0: 9}, None) == []
    assert rule.observe(9.9, {P0: 5}, {P0: 9}, None) == []
    assert rule.observe(10, {P0: 5}, {P0: 9}, None) == [P0]


def test_an_idle_partition_never_stalls() -> None:
    rule = StallRule(timeout_s=10)
    for now in (0, 50, 500):
        assert rule.observe(now, {P0: 9}, {P0: 9}, None) == []


def test_a_record_arriving_on_a_long_idle_partition_is_not_a_stall() -> None:
    """The sequence that restarted healthy workers: a partition idle for longer than the
    timeout, then a record that the next check sees before the worker acked it."""
    rule = StallRule(timeout_s=10)
    assert rule.observe(0, {P0: 9}, {P0: 9}, None) == []
    assert rule.observe(40, {P0: 9}, {P0: 9}, None) == []
    assert rule.observe(43.75, {P0: 9}, {P0: 10}, None) == []  # a record arrived
    assert rule.observe(47.5, {P0: 10}, {P0: 10}, None) == []  # handled: healthy
    assert rule.observe(90, {P0: 10}, {P0: 11}, None) == []  # idle again, another record
    assert rule.observe(99.9, {P0: 10}, {P0: 11}, None) == []
    assert rule.observe(100, {P0: 10}, {P0: 11}, None) == [P0]  # waited 10 s: stalled


def test_a_moving_commit_starts_a_fresh_period() -> None:
    rule = StallRule(timeout_s=10)
    rule.observe(0, {P0: 5, P1: 1}, {P0: 9, P1: 3}, None)
    assert rule.observe(8, {P0: 6, P1: 1}, {P0: 9, P1: 3}, None) == []
    assert rule.observe(12, {P0: 6, P1: 1}, {P0: 9, P1: 3}, None) == [P1]
    assert rule.observe(18, {P0: 6, P1: 2}, {P0: 9, P1: 3}, None) == [P0]


def test_table_recovery_that_moves_is_progress() -> None:
    rule = StallRule(timeout_s=10)
    rule.observe(0, {P0: 5}, {P0: 9}, [(0, 100)])
    assert rule.observe(9, {P0: 5}, {P0: 9}, [(0, 200)]) == []
    assert rule.observe(18, {P0: 5}, {P0: 9}, [(0, 200)]) == []
    assert rule.observe(19, {P0: 5}, {P0: 9}, [(0, 200)]) == [P0]


def test_a_partition_given_away_and_taken_back_starts_afresh() -> None:
    rule = StallRule(timeout_s=10)
    rule.observe(0, {P0: 5}, {P0: 9}, None)
    rule.observe(8, {}, {}, None)
    assert rule.observe(12, {P0: 5}, {P0: 9}, None) == []
    assert rule.observe(22, {P0: 5}, {P0: 9}, None) == [P0]


def test_the_position_is_the_first_record_not_handled() -> None:
    assert first_unhandled(7, set()) == 7
    assert first_unhandled(7, {7, 8, 10}) == 9  # 9 was never handled: records after wait
    assert first_unhandled(7, {8, 9}) == 7
