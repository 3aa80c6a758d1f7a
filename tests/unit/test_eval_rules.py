"""Regression sets (issue 17), as pure rules: the file's shape, every expectation's
verdict and reason, the report's figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from clawstream.cli.eval_run import (
    EvalReport,
    ScenarioResult,
    TurnResult,
    latest_pass_rates,
    retry_after,
)
from clawstream.cli.eval_set import EvalSet, Expect, SetError, cosine, failures, load_set

REPO = Path(__file__).resolve().parents[2]


def _answer(text: str = "hello", status: str = "ok", tools: tuple[str, ...] = (),
            tokens: int = 10) -> Any:
    timeline = [{"step_type": "model", "name": "m"},
                *({"step_type": "tool", "name": t} for t in tools)]
    return {"text": text, "status": status, "reason": "why" if status != "ok" else None,
            "timeline": timeline, "agent_version": "1",
            "usage": {"prompt_tokens": tokens, "completion_tokens": 0, "cost_usd": 0.0}}


def test_the_example_sets_load() -> None:
    for path in sorted((REPO / "evals").glob("*.yaml")):
        assert load_set(path).scenarios, path


def test_a_malformed_set_names_its_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    for text, problem in [("scenarios: []", "at least 1"),
                          ("scenarios: [{name: a, turns: [{user: x, expect: {regx: y}}]}]",
                           "regx"),
                          ("scenarios: [{name: a, turns: [{user: x, expect: {regex: '('}}]}]",
                           "regex"),
                          ("scenarios: [{name: a, turns: [{user: x, expect: "
                           "{json_schema: {type: 5}}}]}]", "JSON schema"),
                          ("scenarios: [{name: a, turns: [{user: x}]}, "
                           "{name: a, turns: [{user: y}]}]", "repeat"),
                          ("{", "bad.yaml")]:
        bad.write_text(text)
        with pytest.raises(SetError, match=problem):
            load_set(bad)


@pytest.mark.parametrize(("expect", "answer", "reason"), [
    ({}, _answer(status="failed"), "status failed: why (expected ok)"),
    ({"status": ["ok", "degraded"]}, _answer(status="degraded"), None),
    ({"contains": "ell"}, _answer(), None),
    ({"contains": ["ell", "bye"]}, _answer(), "does not contain 'bye'"),
    ({"not_contains": "hell"}, _answer(), "contains 'hell'"),
    ({"regex": "^h.l+o$"}, _answer(), None),
    ({"regex": r"\d"}, _answer(), r"does not match /\d/"),
    ({"json_schema": {"type": "object"}}, _answer("[1]"), "JSON schema: [1] is not of type"),
    ({"json_schema": {"type": "object", "required": ["a"]}}, _answer('{"a": 1}'), None),
    ({"json_schema": {"type": "object"}}, _answer("nope"), "is not JSON"),
    ({"tool_called": "shout"}, _answer(tools=("shout",)), None),
    ({"tool_called": "shout"}, _answer(), "did not call shout"),
    ({"tool_not_called": "shout"}, _answer(tools=("shout",)), "called shout"),
    ({"max_steps": 2}, _answer(tools=("a", "b")), "3 steps > 2"),
    ({"max_tokens": 5}, _answer(tokens=6), "6 tokens > 5"),
])
def test_each_expectation_passes_or_says_why(expect: dict[str, Any], answer: Any,
                                             reason: str | None) -> None:
    found = failures(Expect.model_validate(expect), answer)
    if reason is None:
        assert found == []
    else:
        assert len(found) == 1 and found[0].startswith(reason), found


def test_similarity_is_judged_against_its_threshold() -> None:
    expect = Expect.model_validate({"similar_to": {"reference": "x", "threshold": 0.8}})
    assert failures(expect, _answer(), 0.81) == []
    assert failures(expect, _answer(), 0.5) == ["similarity 0.50 < 0.80"]
    assert failures(expect, _answer(), None) == ["similarity was not measured"]
    assert cosine([1, 0], [1, 0]) == pytest.approx(1.0)
    assert cosine([1, 0], [0, 1]) == pytest.approx(0.0)


def _report(version: str, passed: list[bool], at: int, context: int | None = None
            ) -> EvalReport:
    turn = TurnResult("u", "ok", "t", [], 10, 0.001, 100.0, 1, version)
    return EvalReport("bot", version, "s.yaml", f"r{at}{context}", at, 30.0, context,
                      [ScenarioResult(f"s{i}", p, "", [turn]) for i, p in enumerate(passed)])


def test_the_report_adds_up_and_the_latest_pass_rate_per_version_is_kept(
        tmp_path: Path) -> None:
    report = _report("1", [True, True, False, True], 1)
    assert (report.passed, report.pass_rate, report.tokens) == (3, 0.75, 40)
    assert report.scenarios_per_minute == pytest.approx(8.0)
    assert report.to_json()["pass_rate"] == 0.75
    for r in (report, _report("1", [True], 2), _report("2", [False], 3),
              _report("2", [True], 4, context=2)):
        r.save(tmp_path)
    assert latest_pass_rates(tmp_path, "bot") == {"1": 1.0, "2": 0.0}


def test_a_set_without_an_agent_takes_it_from_the_command_line() -> None:
    assert EvalSet.model_validate({"scenarios": [{"name": "a", "turns": [{"user": "x"}]}]
                                   }).agent is None


def test_a_rate_limited_turn_is_sent_again_after_the_wait_it_was_told() -> None:
    limited = {**_answer(status="rejected"), "reason": "tenant eval over its limit; "
               "retry after 1.25 s"}
    assert retry_after(limited) == 1.25
    assert retry_after({**limited, "reason": "unknown agent 'x'"}) is None
    assert retry_after(_answer()) is None and retry_after(None) is None
