"""Per-step cache switches: the request's opt-out and maximum age, the agent's TTL.

The coordinator builds them from the request's ``options`` and the agent's declaration
and sends them on the step command (``cache`` field), so a worker needs no agent lookup.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from clawstream.schemas import records

TRUTHY = {"1", "true", "yes", "on"}
NO_CACHE_OPTIONS = ("no_cache", "no-cache")
MAX_AGE_OPTIONS = ("max_cache_age_s", "max-cache-age-s")


@dataclass(frozen=True)
class CacheControl:
    enabled: bool = True
    max_age_s: float | None = None
    """Only entries younger than this are used (the request accepts nothing staler)."""
    ttl_s: float | None = None
    """How long a result stored by this step lives; None = the layer's default."""

    @classmethod
    def from_record(cls, record: Mapping[str, Any] | None) -> CacheControl:
        if not record:
            return cls()
        return cls(bool(record.get("enabled", True)), record.get("max_age_s"),
                   record.get("ttl_s"))

    def to_record(self) -> records.CacheControl:
        return {"enabled": self.enabled, "max_age_s": self.max_age_s, "ttl_s": self.ttl_s}


def _first(options: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    return next((options[n] for n in names if n in options), None)


def control_for_request(options: Mapping[str, str] | None, ttl_s: float | None = None
                        ) -> records.CacheControl:
    """The step command's ``cache`` record for a request; a garbled max age is ignored
    (the request is still served, just with the default freshness)."""
    options = options or {}
    no_cache = (_first(options, NO_CACHE_OPTIONS) or "").strip().lower() in TRUTHY
    max_age: float | None = None
    raw_age = _first(options, MAX_AGE_OPTIONS)
    if raw_age is not None:
        try:
            max_age = max(0.0, float(raw_age))
        except ValueError:
            max_age = None
    return CacheControl(not no_cache, max_age, ttl_s).to_record()
