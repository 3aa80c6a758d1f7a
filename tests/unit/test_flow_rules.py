"""Flow-control rules that need no stack: scheduling order, routing, budgets, flags."""

from __future__ import annotations

import pytest

from clawstream.config import PoolSpec, Settings, UpstreamSpec
from clawstream.processors.flow.budgets import Budget, conversation_budget, exhausted
from clawstream.processors.flow.flags import FlagView, validate
from clawstream.processors.flow.limiter import excess_over_rate, measured_rate
from clawstream.processors.flow.pools import NoPoolAvailable, estimate_tokens, pool_rate, route
from clawstream.processors.flow.scheduler import LaneScheduler, Pending


def _item(lane: str, tenant: str, n: int) -> Pending:
    return Pending({"lane": lane, "tenant_id": tenant, "step_id": f"{tenant}-{n}"})


def test_interactive_first_then_tenants_take_turns() -> None:
    sched = LaneScheduler(per_lane_limit=100)
    for n in range(3):
        sched.push(_item("batch", "flood", n))
    sched.push(_item("batch", "trickle", 0))
    sched.push(_item("interactive", "web", 0))
    order = [sched.pop().cmd["step_id"] for _ in range(5)]  # type: ignore[union-attr]
    assert order == ["web-0", "flood-0", "trickle-0", "flood-1", "flood-2"]
    assert sched.pop() is None and len(sched) == 0


def test_lane_is_full_at_its_limit_and_requeue_goes_first() -> None:
    sched = LaneScheduler(per_lane_limit=2)
    sched.push(_item("batch", "a", 0))
    assert not sched.full("batch")
    sched.push(_item("batch", "b", 0))
    assert sched.full("batch") and not sched.full("interactive")
    first = sched.pop()
    assert first is not None
    sched.push(first, front=True)
    assert sched.peek() is first


def test_routing_by_task_class_degrade_and_kill_switches() -> None:
    settings = Settings()
    assert route("report", settings, FlagView({})).pool == "large"
    assert route("interface", settings, FlagView({})).pool == "small"
    degraded = route("report", settings, FlagView({"degrade": "on"}))
    assert degraded.pool == "small" and degraded.degraded_reason
    assert route("interface", settings, FlagView({"degrade": "on"})).degraded_reason is None
    killed = route("report", settings, FlagView({"kill.pool.large": "on"}))
    assert killed.pool == "small" and "switched off" in (killed.degraded_reason or "")
    # every pool off (the test stack's settings add an upstream pool, ``remote``)
    with pytest.raises(NoPoolAvailable):
        route("report", settings, FlagView({f"kill.pool.{name}": "on" for name in settings.pools}))


def test_pool_rate_is_under_capacity_unless_a_flag_says() -> None:
    settings = Settings()
    cap = settings.pools["large"].capacity_tokens_per_s
    assert pool_rate("large", settings, FlagView({})) == pytest.approx(cap * 0.85)
    assert pool_rate("large", settings, FlagView({"rate.pool.large": "42"})) == 42.0
    assert estimate_tokens([{"role": "user", "content": "x" * 40}], 16) == 10 + 4 + 16


def test_a_pools_rate_follows_the_running_replicas_of_its_deployment() -> None:
    remote = UpstreamSpec(base_url="http://vllm", model="qwen")
    settings = Settings(pools={
        "local": PoolSpec(capacity_tokens_per_s=100.0),
        "fixed": PoolSpec(capacity_tokens_per_s=100.0, capacity_per_replica=False),
        "remote": PoolSpec(capacity_tokens_per_s=100.0, upstream=remote),
        "vllm": PoolSpec(capacity_tokens_per_s=100.0, upstream=remote,
                         replicas_of="clawstream-vllm/LLMServer:qwen")},
        pool_headroom=0.0)
    running = {"clawstream-generator/generator": 3, "clawstream-vllm/LLMServer:qwen": 5}
    flags = FlagView({})
    assert pool_rate("local", settings, flags, running) == 300.0
    assert pool_rate("fixed", settings, flags, running) == 100.0
    assert pool_rate("remote", settings, flags, running) == 100.0  # outside Serve: fixed
    assert pool_rate("vllm", settings, flags, running) == 500.0
    # Unknown (Serve not asked yet, or not answering): one replica's worth; none running
    # (all being replaced): still one, so steps are not held until their deadlines.
    assert pool_rate("local", settings, flags) == 100.0
    assert pool_rate("local", settings, flags, {"clawstream-generator/generator": 0}) == 100.0
    # An operator's flag still wins.
    assert pool_rate("local", settings, FlagView({"rate.pool.local": "42"}), running) == 42.0


def test_a_pool_names_its_deployment_as_app_slash_deployment() -> None:
    with pytest.raises(ValueError, match="replicas_of"):
        PoolSpec(capacity_tokens_per_s=1.0, replicas_of="LLMServer:qwen")


def test_budgets_can_only_be_lowered_and_name_their_reason() -> None:
    settings = Settings()
    budget = conversation_budget(settings, {"max_steps": "1", "token_budget": "10**9"})
    assert budget == Budget(1, settings.conversation_token_budget)
    assert conversation_budget(settings, {"max_steps": "100000"}).max_steps == \
        settings.conversation_max_steps
    assert exhausted({"steps": 0, "tokens": 0}, budget) is None
    assert "step budget" in (exhausted({"steps": 1, "tokens": 0}, budget) or "")
    assert "token budget" in (exhausted({"steps": 0, "tokens": 50}, Budget(5, 50)) or "")


@pytest.mark.parametrize("name,value", [
    ("degrade", "maybe"), ("kill.tool.x", "2"), ("rate.pool.small", "0"),
    ("limit.tenant.t", "5"), ("nonsense", "on")])
def test_bad_flags_are_refused(name: str, value: str) -> None:
    with pytest.raises(ValueError):
        validate(name, value)


def test_flag_view_reads_switches_and_pairs() -> None:
    view = FlagView({"degrade": "on", "kill.tool.retrieve": "off",
                     "limit.tenant.acme": "0.5/2"})
    assert view.degrade and not view.tool_killed("retrieve")
    assert view.pair("limit.tenant.acme") == (0.5, 2.0)
    assert view.pair("limit.tenant.other") is None


def _admission(at_ms: float, estimate: int, actual: int | None = None,
               settled_at_ms: float | None = None) -> dict[str, float]:
    return {"admitted_at_ms": at_ms, "estimate": estimate,
            "actual": estimate if actual is None else actual,
            "settled_at_ms": at_ms + 1 if settled_at_ms is None else settled_at_ms}


def test_a_late_dispatcher_lowers_the_average_but_never_exceeds_the_rate() -> None:
    # 10 tokens/s, a 10-token bucket, 10-token steps: one step a second at best
    on_time = [_admission(1000.0 * i, 10) for i in range(5)]
    late = [_admission(1300.0 * i, 10) for i in range(5)]  # each wake-up 300 ms late
    assert measured_rate(on_time) == pytest.approx(10.0)
    assert measured_rate(late) == pytest.approx(10.0 / 1.3)
    assert excess_over_rate(on_time, rate=10.0, capacity=10.0) <= 0
    assert excess_over_rate(late, rate=10.0, capacity=10.0) <= 0


def test_excess_counts_refunds_only_once_they_reached_the_bucket() -> None:
    # the second step's 8 refunded tokens reached the bucket before the third admission
    refunded = [_admission(0, 10), _admission(1000, 10, actual=2, settled_at_ms=1100),
                _admission(1200, 10)]
    assert excess_over_rate(refunded, rate=10.0, capacity=10.0) == pytest.approx(0.0)
    # ... and did not yet: the third took 8 tokens the bucket did not have
    unsettled = [*refunded[:1], _admission(1000, 10, actual=2, settled_at_ms=1300),
                 refunded[2]]
    assert excess_over_rate(unsettled, rate=10.0, capacity=10.0) == pytest.approx(8.0)


def test_admissions_faster_than_the_rate_are_an_excess() -> None:
    burst = [_admission(100.0 * i, 10) for i in range(4)]
    assert excess_over_rate(burst, rate=10.0, capacity=10.0) == pytest.approx(27.0)
