"""Pricing, the cost report's arithmetic and filters, and the request's cache switches."""

from __future__ import annotations

from typing import Any

import pytest
from rich.console import Console

from clawstream.cli.cost import hit_rate, parse_since, summarise
from clawstream.cli.cost_cli import print_report
from clawstream.config import Settings
from clawstream.processors.caching import CacheControl, control_for_request, merge_records
from clawstream.processors.keys import prompt_cache_key, tool_cache_key
from clawstream.processors.pricing import cost_usd, estimate_tokens

NOW = 1_800_000_000_000


def _answer(tenant: str, at_ms: int, cost: float, saved: float, cache: list[dict[str, Any]],
            status: str = "ok") -> dict[str, Any]:
    return {"tenant_id": tenant, "answered_at_ms": at_ms, "status": status,
            "usage": {"prompt_tokens": 100, "completion_tokens": 20, "cost_usd": cost,
                      "saved_tokens": 50, "saved_cost_usd": saved}, "cache": cache}


def _layer(name: str, hits: int, misses: int, saved: float = 0.0) -> dict[str, Any]:
    return {"layer": name, "hits": hits, "misses": misses, "saved_tokens": hits * 10,
            "saved_cost_usd": saved}


def test_price_table_prices_input_and_output_separately() -> None:
    prices = {"m": {"input_per_1k": 0.5, "output_per_1k": 2.0}}
    assert cost_usd(prices, "m", 1000, 500) == pytest.approx(1.5)
    assert cost_usd(prices, "unknown", 1000, 500) == 0.0
    assert estimate_tokens("abcdefgh") == 2 and estimate_tokens("") == 1


def test_default_price_table_covers_the_local_models() -> None:
    from clawstream.inference.backends.simulated import SIMULATED_MODEL_ID
    from clawstream.inference.model_files import EMBEDDING_MODEL_ID, GENERATION_MODEL_ID

    prices = Settings().prices
    for model in (GENERATION_MODEL_ID, SIMULATED_MODEL_ID, EMBEDDING_MODEL_ID):
        assert cost_usd(prices, model, 1000) > 0


def test_since_accepts_durations_and_iso_times() -> None:
    assert parse_since("30m", NOW) == NOW - 30 * 60 * 1000
    assert parse_since("2h", NOW) == NOW - 2 * 3600 * 1000
    assert parse_since("1.5d", NOW) == NOW - int(1.5 * 86400 * 1000)
    assert parse_since("2026-01-01T00:00:00+00:00", NOW) == 1_767_225_600_000
    with pytest.raises(ValueError, match="since"):
        parse_since("yesterday", NOW)


def test_summary_filters_and_totals() -> None:
    answers = [
        _answer("acme", NOW - 10_000, 0.002, 0.0, [_layer("prompt", 0, 1), _layer("tool", 0, 1)]),
        _answer("acme", NOW - 5_000, 0.0, 0.002, [_layer("prompt", 1, 0, 0.002),
                                                   _layer("embedding", 7, 1, 0.0001)]),
        _answer("globex", NOW - 4_000, 0.004, 0.0, [_layer("prompt", 0, 1)]),
        _answer("acme", NOW - 90_000_000, 9.0, 0.0, [_layer("prompt", 0, 1)]),
    ]
    report = summarise(answers, since_ms=NOW - 60_000, tenant="acme")
    assert report.total.interactions == 2
    assert report.total.cost_usd == pytest.approx(0.002)
    assert report.total.cost_per_interaction == pytest.approx(0.001)
    assert report.total.savings_ratio == pytest.approx(0.5)
    assert [r["layer"] for r in report.layers] == ["prompt", "tool", "embedding"]
    assert hit_rate(report.layer("prompt")) == pytest.approx(0.5)
    assert hit_rate(report.layer("embedding")) == pytest.approx(7 / 8)
    assert hit_rate(report.layer("tool")) == 0.0
    everyone = summarise(answers, since_ms=NOW - 60_000)
    assert sorted(everyone.by_tenant) == ["acme", "globex"]
    assert everyone.total.interactions == 3
    console = Console(record=True, width=160)
    print_report(everyone, console)
    text = console.export_text()
    assert "3 interactions" in text and "globex" in text
    assert "25% of the uncached cost" in text and "33%" in text


def test_merge_records_adds_layer_by_layer() -> None:
    merged = merge_records([_layer("prompt", 1, 0, 0.1)], [_layer("prompt", 0, 2),
                                                           _layer("tool", 1, 0, 0.2)])
    assert merged == [{"layer": "prompt", "hits": 1, "misses": 2, "saved_tokens": 10,
                       "saved_cost_usd": 0.1},
                      {"layer": "tool", "hits": 1, "misses": 0, "saved_tokens": 10,
                       "saved_cost_usd": 0.2}]


def test_request_options_become_cache_control() -> None:
    assert CacheControl.from_record(control_for_request({}, 120.0)) == CacheControl(
        True, None, 120.0)
    assert not CacheControl.from_record(control_for_request({"no-cache": "true"})).enabled
    assert not CacheControl.from_record(control_for_request({"no_cache": "1"})).enabled
    assert CacheControl.from_record(control_for_request({"no_cache": "0"})).enabled
    assert CacheControl.from_record(
        control_for_request({"max_cache_age_s": "30"})).max_age_s == 30.0
    assert CacheControl.from_record(
        control_for_request({"max_cache_age_s": "soon"})).max_age_s is None
    assert CacheControl.from_record(None) == CacheControl()


def test_key_functions_separate_their_parts() -> None:
    base = prompt_cache_key("p1", "m", {"t": 0}, [{"role": "user", "content": "q"}])
    assert base.startswith("pc:p1:m:")
    assert base != prompt_cache_key("p1", "m", {"t": 0}, [{"role": "user", "content": "q "}])
    assert tool_cache_key("t", "1", {"a": 1, "b": 2}) == tool_cache_key("t", "1", {"b": 2, "a": 1})


def test_spend_that_came_after_its_answer_is_reported_apart() -> None:
    late = {"event_id": "e", "event_type": "step_ignored", "at_ms": NOW - 1_000,
            "request_id": "r", "conversation_id": "c", "trace_id": "t", "step_id": "s",
            "agent": None, "agent_version": None, "worker": "w",
            "detail": {"counted_in_answer": "false", "prompt_tokens": "40",
                       "completion_tokens": "10", "cost_usd": "0.00030000",
                       "saved_tokens": "0", "saved_cost_usd": "0.0"}}
    counted = {**late, "detail": {**late["detail"], "counted_in_answer": "true"}}
    report = summarise([], since_ms=NOW - 60_000, events=[late, counted])  # type: ignore[list-item]
    assert (report.late.interactions, report.late.prompt_tokens) == (1, 40)
    assert report.late.cost_usd == pytest.approx(0.0003)
    console = Console(record=True, width=200)
    print_report(report, console)
    assert "$0.000300" in console.export_text()
