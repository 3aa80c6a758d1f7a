"""The load generator's plan (profiles, seeded arrivals, mixes, faults per request) and its
report (verdict against the seed's bar, plots), without a stack."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from clawstream.deploy.load import plan as plans
from clawstream.deploy.load import report
from clawstream.deploy.load.counts import integrity
from clawstream.deploy.load.run import Outcome, Sample

MIX = {"fault-effect": 2.0, "fault-flaky": 1.0, "fault-hang": 1.0, "fault-model": 1.0}


def test_the_seed_profile_is_burst_plateau_then_a_ramp_down() -> None:
    phases = plans.profile("seed", 3.0, 120)
    assert [p.name for p in phases][:2] == ["burst", "plateau"]
    assert phases[0].rate == 6.0 and phases[1].rate == 3.0
    ramp = [p.rate for p in phases[2:]]
    assert ramp == sorted(ramp, reverse=True) and ramp[0] == 6.0 and ramp[-1] == pytest.approx(1)
    assert sum(p.seconds for p in phases) == pytest.approx(120)
    assert report.peak_phases(phases) == {"burst", "ramp-1"}


def test_a_plan_is_open_loop_seeded_and_follows_its_rates() -> None:
    phases = [plans.Phase("a", 20, 30), plans.Phase("b", 5, 30)]
    faults = plans.Faults(tool_error_rate=0.5, model_error_rate=0.5)
    one = plans.plan(phases, MIX, {"interactive": 4, "batch": 1}, faults, seed=7, run="r")
    assert one == plans.plan(phases, MIX, {"interactive": 4, "batch": 1}, faults, 7, "r")
    assert one != plans.plan(phases, MIX, {"interactive": 4, "batch": 1}, faults, 8, "r")
    by_phase = Counter(p.phase for p in one)
    assert 500 < by_phase["a"] < 700 and 110 < by_phase["b"] < 190
    assert [p.at_s for p in one] == sorted(p.at_s for p in one)
    agents = Counter(p.agent for p in one)
    assert 0.3 < agents["fault-effect"] / len(one) < 0.5
    flaky = [json.loads(p.options["args0"])["fail_attempts"] for p in one
             if p.agent == "fault-flaky"]
    assert 0.35 < sum(flaky) / len(flaky) < 0.65
    marked = [plans.MODEL_FAULT_MARK in p.text for p in one if p.agent == "fault-model"]
    assert 0.35 < sum(marked) / len(marked) < 0.65
    effects = [json.loads(p.options["args0"])["counter"] for p in one
               if p.agent == "fault-effect"]
    assert effects == [p.conversation_id for p in one if p.agent == "fault-effect"]
    assert len({p.conversation_id for p in one}) == len(one)
    assert len(plans.plan(phases, MIX, {"interactive": 1}, faults, 7, "r", limit=10)) == 10


@pytest.mark.parametrize("bad", ["x", "0:10", "3:-1", "a=b:c"])
def test_a_bad_phase_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="phase"):
        plans.parse_phase(bad)


def test_phases_and_mixes_parse() -> None:
    assert plans.parse_phase("peak=4:30") == plans.Phase("peak", 4.0, 30.0)
    assert plans.parse_mix("a:2, b") == {"a": 2.0, "b": 1.0}
    with pytest.raises(ValueError):
        plans.parse_mix("a:0")


def test_process_faults_are_scheduled_within_the_run() -> None:
    faults = plans.Faults(worker_kill_every_s=20, broker_restart_at_s=25,
                          redis_restart_at_s=90)
    assert faults.schedule(60, workers=2) == [(20, "worker-0"), (25, "kafka"),
                                               (40, "worker-1")]


def _answer(rid: str, created: int, answered: int, status: str = "ok",
            wait_ms: float = 50.0) -> dict[str, object]:
    step = {"queue_wait_ms": wait_ms, "cache_hit": False}
    return {"request_id": rid, "status": status, "reason_kind": None if status == "ok"
            else "tool", "created_at_ms": created, "answered_at_ms": answered,
            "timeline": [step], "usage": {"cost_usd": 0.001}}


def _outcome() -> Outcome:
    sent = [{"request_id": f"r{i}", "created_at_ms": 1000 * i, "deadline_ms": 0}
            for i in range(4)]
    answers = {"r0": [_answer("r0", 0, 500)],
               "r1": [_answer("r1", 1000, 4000, wait_ms=2500)],
               "r2": [_answer("r2", 2000, 2300, "failed"), _answer("r2", 2000, 2300)]}
    out = Outcome(0, sent, {"r0": "burst", "r1": "burst", "r2": "plateau", "r3": "plateau"},
                  0, answers, [1, 2], [], [Sample(1.0, 2, 1, 3)], [(2.0, "worker-0")])
    out.counts = integrity(sent, answers, [1, 2])
    return out


def test_the_verdict_counts_and_judges_against_the_bar() -> None:
    phases = [plans.Phase("burst", 4, 2), plans.Phase("plateau", 1, 2)]
    s = report.summary(_outcome(), phases)
    assert (s["sent"], s["answered"], s["answered_once"]) == (4, 3, 2)
    assert (s["lost"], s["doubled"], s["duplicate_effects"]) == (1, 1, 1)
    assert s["statuses_by_reason"] == {"ok: -": 2, "failed: tool": 1}
    assert s["p95_answer_at_peak_s"] == 3.0
    rows = {r.figure.split(" (")[0]: r.passed for r in report.verdict(s)}
    assert rows["lost"] is False and rows["p95 answer at 2x traffic"] is False
    assert rows["queue wait median"] is True and rows["queue wait p95"] is False
    assert not report.nothing_lost(s)


def test_the_report_is_html_with_plots_and_a_verdict_file(tmp_path: Path) -> None:
    phases = [plans.Phase("burst", 4, 2), plans.Phase("plateau", 1, 2)]
    report.write(_outcome(), phases, tmp_path)
    page = (tmp_path / "report.html").read_text()
    for file in report.PLOTS:
        assert (tmp_path / file).read_bytes()[:4] == b"\x89PNG"
        assert f"src='{file}'" in page
    assert "FAIL" in page and "failed: tool" in page
    assert json.loads((tmp_path / "verdict.json").read_text())["summary"]["lost"] == 1
