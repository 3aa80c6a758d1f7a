"""What the caches did during one step: hits, misses, savings, spend and outages.

Cache lookups happen deep inside a step (the retrieval tool embeds through the embedding
cache), so the layers record into the step's report through a context variable instead
of every tool passing a collector along. The worker opens a report per step, copies it
onto the step result (``cache`` field) and turns outages into ``cache_unavailable`` events.
Prometheus counters see the same numbers for the whole process.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from clawstream.metrics import CACHE_ERRORS as ERRORS
from clawstream.metrics import CACHE_LOOKUPS as LOOKUPS
from clawstream.metrics import CACHE_SAVED_COST as SAVED_COST
from clawstream.metrics import CACHE_SAVED_TOKENS as SAVED_TOKENS
from clawstream.schemas.records import CacheUsage

LAYERS = ("prompt", "tool", "embedding")


@dataclass
class LayerStats:
    hits: int = 0
    misses: int = 0
    saved_tokens: int = 0
    saved_cost_usd: float = 0.0
    spent_tokens: int = 0
    spent_cost_usd: float = 0.0


@dataclass(frozen=True)
class CacheFault:
    layer: str
    op: str
    error: str


@dataclass
class CacheReport:
    layers: dict[str, LayerStats] = field(default_factory=dict)
    faults: list[CacheFault] = field(default_factory=list)

    def _layer(self, layer: str) -> LayerStats:
        return self.layers.setdefault(layer, LayerStats())

    def hit(self, layer: str, saved_tokens: int = 0, saved_cost_usd: float = 0.0,
            count: int = 1) -> None:
        stats = self._layer(layer)
        stats.hits += count
        stats.saved_tokens += saved_tokens
        stats.saved_cost_usd += saved_cost_usd
        LOOKUPS.labels(layer, "hit").inc(count)
        SAVED_TOKENS.labels(layer).inc(saved_tokens)
        SAVED_COST.labels(layer).inc(saved_cost_usd)

    def miss(self, layer: str, count: int = 1) -> None:
        self._layer(layer).misses += count
        LOOKUPS.labels(layer, "miss").inc(count)

    def spend(self, layer: str, tokens: int, cost_usd: float) -> None:
        """Work done because of a miss (e.g. texts embedded), billed to this step."""
        stats = self._layer(layer)
        stats.spent_tokens += tokens
        stats.spent_cost_usd += cost_usd

    def fault(self, layer: str, op: str, exc: BaseException) -> None:
        self.faults.append(CacheFault(layer, op, f"{type(exc).__name__}: {exc}"[:300]))
        ERRORS.labels(layer, op).inc()

    def records(self) -> list[CacheUsage]:
        """Avro ``CacheUsage`` records, one per layer that was consulted."""
        return [{"layer": name, "hits": s.hits, "misses": s.misses,
                 "saved_tokens": s.saved_tokens, "saved_cost_usd": s.saved_cost_usd}
                for name, s in sorted(self.layers.items())]


_current: contextvars.ContextVar[CacheReport | None] = contextvars.ContextVar(
    "clawstream_cache_report", default=None)


def current() -> CacheReport:
    """The running step's report; outside a step, a throw-away one (metrics still count)."""
    return _current.get() or CacheReport()


@contextmanager
def collecting() -> Iterator[CacheReport]:
    """Open a fresh report for one step (per asyncio task: concurrent steps do not mix)."""
    report = CacheReport()
    token = _current.set(report)
    try:
        yield report
    finally:
        _current.reset(token)


def merge_records(total: list[CacheUsage], more: list[CacheUsage]) -> list[CacheUsage]:
    """Add ``CacheUsage`` records layer by layer (a request's totals over its steps)."""
    merged: dict[str, CacheUsage] = {r["layer"]: {**r} for r in total}
    for r in more:
        into = merged.setdefault(r["layer"], {"layer": r["layer"], "hits": 0, "misses": 0,
                                              "saved_tokens": 0, "saved_cost_usd": 0.0})
        into["hits"] += r["hits"]
        into["misses"] += r["misses"]
        into["saved_tokens"] += r["saved_tokens"]
        into["saved_cost_usd"] += r["saved_cost_usd"]
    return [merged[k] for k in sorted(merged)]
