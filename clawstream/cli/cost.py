"""Spend and savings from the answer events: what ``clawstream cost`` reports.

Every answer carries its request's totals (tokens and USD billed, tokens and USD saved)
and, per cache layer, hits, misses and savings, so the report is exact for any time range
or tenant, replayed from Kafka. The one spend no answer can carry, a step execution whose
result came back after its request was answered (a repeat after a crash, an attempt that
outlived its budget), is on its ``step_ignored`` event and reported apart.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from clawstream.processors.caching.report import LAYERS, merge_records
from clawstream.schemas.records import AgentAnswer, AgentEvent, CacheUsage, Usage

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration_s(text: str) -> float | None:
    """``90s``, ``30m``, ``2h``, ``7d`` in seconds; None for anything else."""
    match = _DURATION.match(text)
    return float(match.group(1)) * _UNIT_S[match.group(2)] if match else None


def parse_since(text: str, now_ms: int) -> int:
    """``--since``: a duration back from now (``90s``, ``30m``, ``2h``, ``7d``) or an ISO
    timestamp (``2026-11-24T08:00``, local time unless it has an offset); epoch ms out."""
    back_s = parse_duration_s(text)
    if back_s is not None:
        return now_ms - int(back_s * 1000)
    try:
        return int(datetime.fromisoformat(text.strip()).timestamp() * 1000)
    except ValueError:
        raise ValueError(f"--since {text!r}: expected e.g. 30m, 2h, 7d or an ISO time") from None


@dataclass
class Totals:
    interactions: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    saved_tokens: int = 0
    saved_cost_usd: float = 0.0

    def add(self, usage: Usage) -> None:
        self.interactions += 1
        self.prompt_tokens += usage["prompt_tokens"]
        self.completion_tokens += usage["completion_tokens"]
        self.cost_usd += usage["cost_usd"]
        self.saved_tokens += usage["saved_tokens"]
        self.saved_cost_usd += usage["saved_cost_usd"]

    @property
    def cost_per_interaction(self) -> float:
        return self.cost_usd / self.interactions if self.interactions else 0.0

    @property
    def savings_ratio(self) -> float:
        """Share of what the requests would have cost without caches that was saved."""
        would_cost = self.cost_usd + self.saved_cost_usd
        return self.saved_cost_usd / would_cost if would_cost else 0.0


@dataclass
class CostReport:
    total: Totals = field(default_factory=Totals)
    late: Totals = field(default_factory=Totals)
    """Steps whose results came back after their request's answer (no tenant known)."""
    by_tenant: dict[str, Totals] = field(default_factory=dict)
    statuses: Counter[str] = field(default_factory=Counter)
    layers: list[CacheUsage] = field(default_factory=list)

    def layer(self, name: str) -> CacheUsage:
        found = next((r for r in self.layers if r["layer"] == name), None)
        return found or {"layer": name, "hits": 0, "misses": 0, "saved_tokens": 0,
                         "saved_cost_usd": 0.0}


def hit_rate(layer: CacheUsage) -> float | None:
    lookups = layer["hits"] + layer["misses"]
    return layer["hits"] / lookups if lookups else None


def summarise(answers: Iterable[AgentAnswer], *, since_ms: int | None = None,
              tenant: str | None = None, events: Iterable[AgentEvent] = ()) -> CostReport:
    """Totals over the answers answered at or after ``since_ms`` for ``tenant`` (all if
    None); rejected requests count as interactions (they cost nothing). ``events``: the
    audit log, for the late spend (left out when a tenant is asked for)."""
    report = CostReport()
    for ev in events:
        detail = ev["detail"]
        if (ev["event_type"] == "step_ignored" and detail.get("counted_in_answer") == "false"
                and tenant is None and (since_ms is None or ev["at_ms"] >= since_ms)):
            report.late.add({"prompt_tokens": int(detail.get("prompt_tokens", 0)),
                             "completion_tokens": int(detail.get("completion_tokens", 0)),
                             "cost_usd": float(detail.get("cost_usd", 0.0)),
                             "saved_tokens": int(detail.get("saved_tokens", 0)),
                             "saved_cost_usd": float(detail.get("saved_cost_usd", 0.0))})
    for answer in answers:
        if since_ms is not None and answer["answered_at_ms"] < since_ms:
            continue
        if tenant is not None and answer["tenant_id"] != tenant:
            continue
        report.total.add(answer["usage"])
        report.by_tenant.setdefault(answer["tenant_id"], Totals()).add(answer["usage"])
        report.statuses[answer["status"]] += 1
        report.layers = merge_records(report.layers, answer["cache"] or [])
    report.layers = [report.layer(name) for name in LAYERS] + [
        r for r in report.layers if r["layer"] not in LAYERS]
    return report
