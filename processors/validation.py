"""What a request must look like before the coordinator takes it: the fields it needs, the
options it knows, and sizes that keep every record it causes under Kafka's limits.

Pure functions: the coordinator answers a request that fails them ``rejected`` with the
reason (naming the field), never retries it, and never lets it reach a model or a tool.
Checked here and not only by the client helper, because any producer can publish to the
request topics.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from clawstream.processors.canary.rule import VERSION
from clawstream.processors.policy import Policy
from clawstream.schemas.records import AgentRequest, ReasonKind

MAX_ID_CHARS = 256
TRUTHY = frozenset({"1", "true", "yes", "on"})
FALSY = frozenset({"0", "false", "no", "off", ""})
POSITIVE_INT_OPTIONS = ("max_steps", "token_budget", "max_tokens")
NON_NEGATIVE_OPTIONS = ("max_cache_age_s", "max-cache-age-s")
SWITCH_OPTIONS = ("no-cache", "no_cache", "stream")
RESERVED_OPTIONS = ("run",)
"""Set by the coordinator itself on queued requests; a client may not."""
MAX_CONTEXT_EXCHANGES = 64
"""The most exchanges a request may ask its prompt to keep (``context_exchanges``): each
is kept in the conversation's state, which must stay small."""


@dataclass(frozen=True)
class Rejection:
    """Why a request may not start now, and after how long it may (None: not in this window
    of anything the client controls)."""

    kind: ReasonKind
    reason: str
    retry_after_s: float


def request_problem(req: AgentRequest, policy: Policy) -> str | None:
    """Why ``req`` cannot be taken, naming the field; None if it can."""
    ids = {"request_id": req["request_id"], "idempotency_key": req["idempotency_key"],
           "conversation_id": req["conversation_id"], "tenant_id": req["tenant_id"],
           "user_id": req["user_id"], "agent": req["agent"]}
    for name, value in ids.items():
        if not value.strip():
            return f"field {name} is empty"
        if len(value) > MAX_ID_CHARS:
            return f"field {name} is longer than {MAX_ID_CHARS} characters"
    if not req["text"].strip():
        return "field text is empty"
    if len(req["text"]) > policy.max_request_chars:
        return (f"field text has {len(req['text'])} characters, over the limit of "
                f"{policy.max_request_chars}")
    if req["deadline_ms"] < req["created_at_ms"]:
        return "field deadline_ms is before created_at_ms"
    return option_problem(req["options"])


def _version_problems(options: dict[str, str]) -> str | None:
    """An eval's options: which version of the agent, how much context."""
    version = options.get("agent_version")
    if version is not None and not VERSION.match(version):
        return f"option agent_version is not a version, got {version[:80]!r}"
    raw = options.get("context_exchanges")
    if raw is not None and not (raw.isdigit() and 1 <= int(raw) <= MAX_CONTEXT_EXCHANGES):
        return (f"option context_exchanges must be an integer 1-{MAX_CONTEXT_EXCHANGES}, "
                f"got {raw[:80]!r}")
    return None


SAMPLING_RANGES = {"temperature": (0.0, 2.0), "top_p": (0.0, 1.0)}
"""Closed bounds of the numeric sampling options (top_p above 0)."""
MAX_STOP_SEQUENCES = 4


def _sampling_problem(options: dict[str, str]) -> str | None:
    """A governed call's sampling options, as the gateway sets them."""
    for name, (low, high) in SAMPLING_RANGES.items():
        if name in options:
            try:
                value = float(options[name])
            except ValueError:
                value = math.nan
            if not (low <= value <= high) or (name == "top_p" and value == 0):
                return f"option {name} must be a number in [{low}, {high}], got {options[name]!r}"
    if "seed" in options:
        try:
            int(options["seed"])
        except ValueError:
            return f"option seed must be an integer, got {options['seed']!r}"
    if "stop" in options:
        try:
            stop = json.loads(options["stop"])
        except ValueError:
            stop = None
        if (not isinstance(stop, list) or len(stop) > MAX_STOP_SEQUENCES
                or not all(isinstance(s, str) and s for s in stop)):
            return (f"option stop must be a JSON list of at most {MAX_STOP_SEQUENCES} "
                    f"non-empty strings, got {options['stop']!r}")
    return None


def option_problem(options: dict[str, str]) -> str | None:
    for name in RESERVED_OPTIONS:
        if name in options:
            return f"option {name} is reserved for the coordinator"
    for name in POSITIVE_INT_OPTIONS:
        if name in options:
            try:
                number = int(options[name])
            except ValueError:
                number = 0
            if number < 1:
                return f"option {name} must be a positive integer, got {options[name]!r}"
    for name in NON_NEGATIVE_OPTIONS:
        if name in options:
            try:
                seconds = float(options[name])
            except ValueError:
                seconds = math.nan
            if not (math.isfinite(seconds) and seconds >= 0):
                return (f"option {name} must be a number of seconds >= 0, got "
                        f"{options[name]!r}")
    problem = _version_problems(options) or _sampling_problem(options)
    if problem is not None:
        return problem
    for name in SWITCH_OPTIONS:
        if name in options and options[name].strip().lower() not in TRUTHY | FALSY:
            return f"option {name} must be true or false, got {options[name]!r}"
    return None
