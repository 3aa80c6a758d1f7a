"""A routing rule: which version of an agent new conversations get.

One flag per agent on the compacted control topic, ``route.agent.<name>``, whose value is
the rule in words an operator can read in ``clawstream flags get``::

    current=1.1.0 candidate=2.0.0 share=20 since=1764000000000 margin=0.1 min_sample=30

``current`` is the version everybody gets (left out: the version the agent's module
declares live); ``candidate`` takes ``share`` percent of *new* conversations, chosen by a
hash of the conversation id; ``since`` is when the rule was set (the watcher and
``clawstream canary status`` count answers from then on). The rest are the automatic
rollback's thresholds for this canary (left out: the settings' ``canary_*``), and
``auto_rollback=off`` turns it off; ``default`` is the empty rule (the live version
the module declares, for everybody). Pure: parsed by every worker from its flag snapshot.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

ROUTE_PREFIX = "route.agent."
VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
"""What a version may look like: no spaces or ``=`` (the rule is ``key=value`` words)."""
_SWITCH = {"on": True, "true": True, "1": True, "yes": True,
           "off": False, "false": False, "0": False, "no": False}


@dataclass(frozen=True)
class Route:
    current: str | None = None
    candidate: str | None = None
    share: float = 0.0
    """Percent of new conversations the candidate takes, 0-100."""
    since_ms: int = 0
    max_error_margin: float | None = None
    """Rollback when the candidate's failed+degraded rate exceeds the current's by more
    than this (absolute, 0.1 = ten points); None: ``settings.canary_max_error_margin``."""
    p95_margin: float | None = None
    """Rollback when the candidate's p95 latency exceeds the current's by more than this
    fraction (0.5 = 50 % slower); None: ``settings.canary_p95_margin``."""
    min_sample: int | None = None
    """Answers each version needs before the watcher judges; None: the settings'."""
    auto_rollback: bool = True

    @property
    def canary(self) -> bool:
        """A candidate takes some traffic."""
        return self.candidate is not None and self.share > 0

    def format(self) -> str:
        words = [f"current={self.current}" if self.current else ""]
        if self.candidate is not None:
            words += [f"candidate={self.candidate}", f"share={self.share:g}"]
        words.append(f"since={self.since_ms}" if self.since_ms else "")
        for key, value in (("margin", self.max_error_margin), ("p95_margin", self.p95_margin),
                           ("min_sample", self.min_sample)):
            words.append(f"{key}={value:g}" if value is not None else "")
        words.append("" if self.auto_rollback else "auto_rollback=off")
        return " ".join(w for w in words if w) or "default"

    def promoted(self) -> Route:
        """The candidate becomes the current version of every conversation."""
        return Route(current=self.candidate or self.current)

    def rolled_back(self) -> Route:
        """The candidate takes nothing any more; its conversations move back."""
        return Route(current=self.current)

    def with_share(self, share: float) -> Route:
        return replace(self, share=share)


def parse_route(text: str) -> Route:
    """A rule from its flag value; ValueError names what is wrong (the CLI shows it)."""
    if text.strip() == "default":
        return Route()
    fields: dict[str, str] = {}
    for word in text.split():
        key, sep, value = word.partition("=")
        if not sep or not value:
            raise ValueError(f"expected key=value words, got {word!r}")
        if key in fields:
            raise ValueError(f"{key} is given twice")
        fields[key] = value
    known = {"current", "candidate", "share", "since", "margin", "p95_margin", "min_sample",
             "auto_rollback"}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(unknown)}; known are "
                         f"{', '.join(sorted(known))}")
    for key in ("current", "candidate"):
        if key in fields and not VERSION.match(fields[key]):
            raise ValueError(f"{key}={fields[key]!r} is not a version (letters, digits, . _ + -)")
    share = _number(fields, "share", 0.0)
    if not 0 <= share <= 100:
        raise ValueError(f"share must be a percentage 0-100, got {share:g}")
    if "candidate" in fields and "share" not in fields:
        raise ValueError("a candidate needs a share (percent of new conversations)")
    if fields.get("candidate") is not None and fields.get("candidate") == fields.get("current"):
        raise ValueError("the candidate is the current version")
    auto = fields.get("auto_rollback", "on").lower()
    if auto not in _SWITCH:
        raise ValueError(f"auto_rollback must be on or off, got {auto!r}")
    margin = _optional(fields, "margin")
    p95 = _optional(fields, "p95_margin")
    sample = _optional(fields, "min_sample")
    for name, limit in (("margin", margin), ("p95_margin", p95)):
        if limit is not None and limit < 0:
            raise ValueError(f"{name} must be >= 0")
    if sample is not None and (sample < 1 or sample != int(sample)):
        raise ValueError("min_sample must be a positive integer")
    return Route(current=fields.get("current"), candidate=fields.get("candidate"),
                 share=share, since_ms=int(_number(fields, "since", 0.0)),
                 max_error_margin=margin, p95_margin=p95,
                 min_sample=int(sample) if sample is not None else None,
                 auto_rollback=_SWITCH[auto])


def _number(fields: Mapping[str, str], key: str, default: float) -> float:
    raw = fields.get(key)
    if raw is None:
        return default
    try:
        return float(raw.rstrip("%"))
    except ValueError:
        raise ValueError(f"{key} must be a number, got {raw!r}") from None


def _optional(fields: Mapping[str, str], key: str) -> float | None:
    return _number(fields, key, 0.0) if key in fields else None


def route_flag(agent: str) -> str:
    return f"{ROUTE_PREFIX}{agent}"


def routes_from(values: Mapping[str, str]) -> dict[str, Route]:
    """Every agent's rule among flag values; a value that does not parse is left out (the
    CLI refuses to write one, so only a hand-made record can be malformed)."""
    routes: dict[str, Route] = {}
    for name, value in values.items():
        if name.startswith(ROUTE_PREFIX) and value.strip():
            try:
                routes[name.removeprefix(ROUTE_PREFIX)] = parse_route(value)
            except ValueError:
                continue
    return routes
