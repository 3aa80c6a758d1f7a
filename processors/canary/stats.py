"""What each version of an agent did, from its answers, and when a candidate must go.

Every answer carries the agent version that produced it, its status, its usage, its cache
report and its timestamps, so the comparison of two versions is exact, for any window,
replayed from the answer topic: ``clawstream canary status`` prints it, and the watcher in
the worker (``watcher.py``) decides an automatic rollback with it. Pure: answers in,
figures and a verdict out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from clawstream.config import Settings
from clawstream.processors.caching.report import merge_records
from clawstream.processors.canary.rule import Route
from clawstream.schemas.records import AgentAnswer, CacheUsage


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.5) - 1))]


@dataclass
class VersionStats:
    """The answers of one version of one agent."""

    statuses: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    cache: list[CacheUsage] = field(default_factory=list)

    def add(self, answer: AgentAnswer) -> None:
        self.statuses[answer["status"]] += 1
        if answer["status"] == "rejected":
            return  # refused at the entrance: nothing this version did
        self.latencies_ms.append(float(answer["answered_at_ms"] - answer["created_at_ms"]))
        usage = answer["usage"]
        self.prompt_tokens += usage["prompt_tokens"]
        self.completion_tokens += usage["completion_tokens"]
        self.cost_usd += usage["cost_usd"]
        self.cache = merge_records(self.cache, answer["cache"] or [])

    @property
    def interactions(self) -> int:
        """Requests this version ran (answered ok, degraded or failed; not rejected)."""
        return len(self.latencies_ms)

    def rate(self, *statuses: str) -> float:
        return (sum(self.statuses[s] for s in statuses) / self.interactions
                if self.interactions else 0.0)

    @property
    def bad_rate(self) -> float:
        """Failed or degraded, of the requests it ran."""
        return self.rate("failed", "degraded")

    def p(self, q: float) -> float:
        return percentile(self.latencies_ms, q)

    @property
    def tokens_per_interaction(self) -> float:
        total = self.prompt_tokens + self.completion_tokens
        return total / self.interactions if self.interactions else 0.0

    @property
    def cost_per_interaction(self) -> float:
        return self.cost_usd / self.interactions if self.interactions else 0.0

    def hit_rate(self, layer: str | None = None) -> float | None:
        """Cache hits of all look-ups (of one layer); None when nothing was looked up."""
        rows = [r for r in self.cache if layer is None or r["layer"] == layer]
        lookups = sum(r["hits"] + r["misses"] for r in rows)
        return sum(r["hits"] for r in rows) / lookups if lookups else None


def by_version(answers: Iterable[AgentAnswer], agent: str, *, since_ms: int = 0,
               exclude_tenant: str | None = None) -> dict[str, VersionStats]:
    """The agent's answers since ``since_ms`` by version (an eval's tenant left out: its
    traffic is chosen, not live)."""
    stats: dict[str, VersionStats] = {}
    for answer in answers:
        if (answer["agent"] != agent or answer["answered_at_ms"] < since_ms
                or answer["tenant_id"] == exclude_tenant or answer["agent_version"] == "none"):
            continue
        stats.setdefault(answer["agent_version"], VersionStats()).add(answer)
    return stats


@dataclass(frozen=True)
class Thresholds:
    """When a candidate is rolled back automatically."""

    max_error_margin: float
    p95_margin: float
    p95_min_delta_ms: float
    min_sample: int

    @classmethod
    def of(cls, route: Route, settings: Settings) -> Thresholds:
        """The rule's own thresholds where it sets them, else the settings'."""
        return cls(
            max_error_margin=(route.max_error_margin if route.max_error_margin is not None
                              else settings.canary_max_error_margin),
            p95_margin=route.p95_margin if route.p95_margin is not None
            else settings.canary_p95_margin,
            p95_min_delta_ms=settings.canary_p95_min_delta_ms,
            min_sample=route.min_sample or settings.canary_min_sample)


def rollback_reason(current: VersionStats, candidate: VersionStats, limits: Thresholds
                    ) -> str | None:
    """Why the candidate must be rolled back, or None. Judged once both versions ran at
    least ``min_sample`` requests: the candidate's failed+degraded rate above the current's
    by more than the margin, or its p95 latency above the current's by more than the
    margin (and by at least ``p95_min_delta_ms``, so milliseconds of noise on a fast agent
    are not a regression)."""
    if min(current.interactions, candidate.interactions) < limits.min_sample:
        return None
    if candidate.bad_rate - current.bad_rate > limits.max_error_margin:
        return (f"failed/degraded rate {candidate.bad_rate:.1%} over "
                f"{candidate.interactions} requests, against {current.bad_rate:.1%} over "
                f"{current.interactions} for the current version (margin "
                f"{limits.max_error_margin:.1%})")
    cand_p95, cur_p95 = candidate.p(0.95), current.p(0.95)
    if (cand_p95 > cur_p95 * (1 + limits.p95_margin)
            and cand_p95 - cur_p95 >= limits.p95_min_delta_ms):
        return (f"p95 latency {cand_p95:.0f} ms over {candidate.interactions} requests, "
                f"against {cur_p95:.0f} ms over {current.interactions} for the current "
                f"version (margin {limits.p95_margin:.0%})")
    return None
