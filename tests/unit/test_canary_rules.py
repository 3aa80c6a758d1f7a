"""Versions of an agent and canaries (issue 17), as pure rules: the routing rule's words,
the routing decision (sticky, share within binomial bounds, events), the figures per
version and the automatic-rollback verdict."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clawstream.cli.canary_cli import start_route
from clawstream.config import Settings
from clawstream.processors.api import Agent
from clawstream.processors.canary.routing import bucket, route_request, with_routes
from clawstream.processors.canary.rule import Route, parse_route, routes_from
from clawstream.processors.canary.stats import (
    Thresholds,
    VersionStats,
    by_version,
    rollback_reason,
)
from clawstream.processors.canary.watcher import watched_canaries
from clawstream.processors.conversation import Rules, on_request
from clawstream.processors.flow.flags import FlagView, validate
from clawstream.processors.policy import Policy
from clawstream.processors.registry import Registry, RegistryError
from clawstream.processors.state import empty_conversation
from clawstream.streams.publisher import new_request
from clawstream.streams.topics import EVENTS


def _registry() -> Registry:
    registry = Registry()
    registry.add(Agent(name="bot", version="1.0", instructions="one"))
    registry.add(Agent(name="bot", version="2.0", instructions="two", candidate=True))
    registry.check()
    return registry


REGISTRY = _registry()
BASE = Rules(Policy(interactive_step_ms=1000), REGISTRY)


def _rules(rule: str) -> Rules:
    return with_routes(BASE, {"route.agent.bot": rule})


def _version(conv: Any, cid: str, rules: Rules, **options: str) -> tuple[str, list[Any]]:
    req = new_request(agent="bot", conversation_id=cid, text="hi", options=options or None)
    routed = route_request(conv, req, 0, rules)
    assert routed.agent is not None, routed.problem
    return routed.agent.version, [o.record for o in routed.outputs]


def test_the_rule_reads_back_what_it_writes() -> None:
    route = Route(current="1.0", candidate="2.0", share=20, since_ms=5, max_error_margin=0.1,
                  min_sample=30, auto_rollback=False)
    assert parse_route(route.format()) == route
    assert parse_route("default") == Route()
    assert route.promoted() == Route(current="2.0")
    assert route.rolled_back() == Route(current="1.0")


@pytest.mark.parametrize("text", ["current=1 candidate=1 share=5", "candidate=2",
                                  "share=120 candidate=2", "current=a b", "foo=1",
                                  "candidate=2 share=5 margin=-1", "min_sample=0.5",
                                  "candidate=x=y share=1", "current=1 current=2"])
def test_a_malformed_rule_is_refused_with_a_reason(text: str) -> None:
    with pytest.raises(ValueError):
        parse_route(text)
    with pytest.raises(ValueError):
        validate("route.agent.bot", text)


def test_the_cli_turns_a_fraction_into_the_rule() -> None:
    route = start_route(Route(current="0.9"), "1.0", "2.0", 0.2, current=None, margin=None,
                        p95_margin=None, min_sample=None, auto_rollback=True, now_ms=7)
    assert (route.current, route.candidate, route.share, route.since_ms) == (
        "0.9", "2.0", 20, 7)
    with pytest.raises(ValueError):
        start_route(Route(), "1.0", "2.0", 1.5, current=None, margin=None, p95_margin=None,
                    min_sample=None, auto_rollback=True, now_ms=7)


def test_versions_live_side_by_side_with_exactly_one_live() -> None:
    assert REGISTRY.versions("bot") == ("1.0", "2.0")
    assert REGISTRY.agent("bot").version == "1.0"  # type: ignore[union-attr]
    assert REGISTRY.agent("bot", "2.0").system_prompt == "two"  # type: ignore[union-attr]
    twice = Registry()
    twice.add(Agent(name="bot", version="1.0", instructions="one"))
    with pytest.raises(RegistryError):
        twice.add(Agent(name="bot", version="1.0", instructions="again"))
    two_live = Registry()
    two_live.add(Agent(name="bot", version="1.0", instructions="one"))
    two_live.add(Agent(name="bot", version="2.0", instructions="two"))
    with pytest.raises(RegistryError, match="several live versions"):
        two_live.check()


def test_without_a_rule_everybody_gets_the_live_version_and_the_decision_is_an_event(
        ) -> None:
    conv = empty_conversation()
    version, events = _version(conv, "c1", BASE)
    assert version == "1.0"
    assert [e["event_type"] for e in events] == ["version_routed"]
    assert events[0]["agent_version"] == "1.0"
    assert events[0]["detail"]["reason"] == "new"
    assert _version(conv, "c1", BASE) == ("1.0", [])  # stays, nothing new to say


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=30, unique=True),
       st.floats(min_value=0, max_value=100))
def test_a_conversation_stays_on_its_version_while_the_rule_names_it(
        ids: list[str], share: float) -> None:
    rules = _rules(f"current=1.0 candidate=2.0 share={share}")
    for cid in ids:
        conv = empty_conversation()
        first, events = _version(conv, cid, rules)
        assert first == ("2.0" if bucket("bot", cid) * 100 < share else "1.0")
        assert events[0]["detail"]["bucket"]
        # later requests, and a higher share, keep it where it is
        assert _version(conv, cid, rules) == (first, [])
        assert _version(conv, cid, _rules("current=1.0 candidate=2.0 share=100"))[0] == first


def test_a_rollback_moves_the_candidates_conversations_back_and_says_so() -> None:
    canary = _rules("current=1.0 candidate=2.0 share=100")
    conv = empty_conversation()
    assert _version(conv, "c", canary)[0] == "2.0"
    version, events = _version(conv, "c", _rules("current=1.0"))
    assert version == "1.0"
    assert (events[0]["detail"]["reason"], events[0]["detail"]["previous"]) == ("moved", "2.0")
    promoted = _version(empty_conversation(), "d", _rules("current=2.0"))
    assert promoted[0] == "2.0"


def test_a_conversation_already_talking_before_the_canary_is_not_moved() -> None:
    conv = empty_conversation()
    conv["exchanges"].append({"request_id": "r", "user": "u", "assistant": "a"})
    version, events = _version(conv, "c", _rules("current=1.0 candidate=2.0 share=100"))
    assert (version, events[0]["detail"]["reason"]) == ("1.0", "existing")


def test_an_explicit_version_runs_once_and_leaves_the_pin_alone() -> None:
    conv = empty_conversation()
    assert _version(conv, "c", BASE)[0] == "1.0"
    version, events = _version(conv, "c", BASE, agent_version="2.0")
    assert (version, events[0]["detail"]["reason"]) == ("2.0", "requested")
    assert conv["agent_versions"] == {"bot": "1.0"}
    req = new_request(agent="bot", conversation_id="c", text="hi",
                      options={"agent_version": "9.9"})
    assert "no version '9.9'" in route_request(conv, req, 0, BASE).problem


def test_a_rule_naming_a_version_not_deployed_falls_back_to_the_live_one() -> None:
    assert _version(empty_conversation(), "c", _rules(
        "current=0.1 candidate=7.0 share=100"))[0] == "1.0"


def _binomial_bounds(n: int, p: float, z: float = 4.0) -> tuple[float, float]:
    sd = math.sqrt(n * p * (1 - p))
    return n * p - z * sd, n * p + z * sd


@settings(max_examples=20, deadline=None)
@given(st.sampled_from([5.0, 20.0, 50.0, 80.0]), st.text(min_size=1, max_size=8))
def test_the_share_of_new_conversations_is_within_binomial_bounds(share: float,
                                                                  salt: str) -> None:
    rules = _rules(f"current=1.0 candidate=2.0 share={share}")
    n = 1000
    to_candidate = sum(_version(empty_conversation(), f"{salt}-{i}", rules)[0] == "2.0"
                       for i in range(n))
    low, high = _binomial_bounds(n, share / 100)
    assert low <= to_candidate <= high


def test_the_coordinator_starts_a_request_on_the_routed_version() -> None:
    rules = _rules("current=1.0 candidate=2.0 share=100")
    decision = on_request(None, None, new_request(agent="bot", conversation_id="c",
                                                  text="hi"), 0, rules, "t/0/1")
    assert decision.conversation["active"]["agent_version"] == "2.0"  # type: ignore[index]
    kinds = [o.record["event_type"] for o in decision.outputs  # type: ignore[typeddict-item]
             if o.topic == EVENTS.name]
    assert "version_routed" in kinds


def _answer(version: str, status: str, ms: int, tenant: str = "t", at: int = 100
            ) -> Any:
    return {"agent": "bot", "agent_version": version, "status": status, "tenant_id": tenant,
            "created_at_ms": at - ms, "answered_at_ms": at, "cache": [],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "cost_usd": 0.001,
                      "saved_tokens": 0, "saved_cost_usd": 0.0}}


LIMITS = Thresholds(max_error_margin=0.1, p95_margin=0.5, p95_min_delta_ms=100, min_sample=20)


def _stats(statuses: list[str], ms: int = 100) -> VersionStats:
    s = VersionStats()
    for status in statuses:
        s.add(_answer("x", status, ms))
    return s


def test_a_candidate_failing_more_than_the_margin_is_rolled_back() -> None:
    current = _stats(["ok"] * 38 + ["failed"] * 2)
    assert rollback_reason(current, _stats(["ok"] * 17 + ["failed"] * 3), LIMITS) is None
    reason = rollback_reason(current, _stats(["ok"] * 12 + ["degraded", "failed"] * 4), LIMITS)
    assert reason is not None and "failed/degraded rate 40.0%" in reason
    # not before the minimum sample
    assert rollback_reason(current, _stats(["failed"] * 19), LIMITS) is None


def test_a_slower_candidate_is_rolled_back_only_past_both_p95_margins() -> None:
    current = _stats(["ok"] * 30, ms=400)
    assert rollback_reason(current, _stats(["ok"] * 30, ms=550), LIMITS) is None
    reason = rollback_reason(current, _stats(["ok"] * 30, ms=900), LIMITS)
    assert reason is not None and "p95 latency 900 ms" in reason
    fast = _stats(["ok"] * 30, ms=10)
    assert rollback_reason(fast, _stats(["ok"] * 30, ms=50), LIMITS) is None  # < 100 ms


def test_figures_per_version_leave_out_the_eval_tenant_and_rejections() -> None:
    answers = [_answer("1.0", "ok", 100), _answer("2.0", "failed", 300),
               _answer("2.0", "ok", 100, tenant="eval"), _answer("2.0", "rejected", 0),
               _answer("1.0", "ok", 100, at=5)]
    stats = by_version(answers, "bot", since_ms=50, exclude_tenant="eval")
    assert stats["1.0"].interactions == 1
    assert (stats["2.0"].interactions, stats["2.0"].statuses["rejected"]) == (1, 1)
    assert stats["2.0"].bad_rate == 1.0
    assert stats["1.0"].tokens_per_interaction == 15


def test_thresholds_come_from_the_rule_else_the_settings() -> None:
    limits = Thresholds.of(parse_route("candidate=2.0 share=5 margin=0.3"), Settings())
    assert limits.max_error_margin == 0.3
    assert limits.min_sample == Settings().canary_min_sample


def test_the_watcher_watches_only_live_canaries_with_rollback_on() -> None:
    flags = FlagView({"route.agent.bot": "current=1.0 candidate=2.0 share=20",
                      "route.agent.other": "candidate=2.0 share=20",
                      "route.agent.off": "current=1.0 candidate=2.0 share=5 auto_rollback=off"
                      })
    watched = watched_canaries(flags, REGISTRY)
    assert list(watched) == ["bot"]
    assert (watched["bot"].current, watched["bot"].candidate) == ("1.0", "2.0")
    assert routes_from({"route.agent.x": "garbage"}) == {}
