"""Model pools: which pool serves a step, at which tokens/s, and what ``degrade`` changes.

Pools are logical (settings.pools): locally both are served by the one Serve app, each
with its own stated capacity and limiter, so routing is real (the step command names the
pool, the limiter charges that pool's bucket, events show it) even with one model file.
A pool's capacity is per replica of the deployment serving it: the limiter follows the
replicas Serve runs (``processors/flow/replicas.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from clawstream.config import PoolSpec, Settings
from clawstream.inference.protocol import GENERATOR_APP_NAME, GENERATOR_DEPLOYMENT
from clawstream.processors.flow.flags import FlagView
from clawstream.schemas.records import Message


@dataclass(frozen=True)
class Route:
    """The chosen pool, and why it is not the one the task class asked for (or None)."""

    pool: str
    degraded_reason: str | None = None


class NoPoolAvailable(Exception):
    """Every pool is switched off: the step cannot run anywhere."""


def _by_size(settings: Settings) -> list[str]:
    return sorted(settings.pools, key=lambda name: (settings.pools[name].rank, name))


def smallest_pool(settings: Settings, flags: FlagView, exclude: str | None = None) -> str | None:
    for name in _by_size(settings):
        if name != exclude and not flags.pool_killed(name):
            return name
    return None


def route(task_class: str, settings: Settings, flags: FlagView) -> Route:
    """The task class picks the pool (a pass-through call's task class is the pool it names);
    ``degrade`` sends everything to the smallest pool; a killed pool sends its work to the
    smallest one still on."""
    wanted = settings.task_pools.get(task_class) or (
        task_class if task_class in settings.pools else _by_size(settings)[0])
    if flags.degrade:
        small = smallest_pool(settings, flags)
        if small is None:
            raise NoPoolAvailable("every model pool is switched off")
        reason = None if small == wanted else f"degrade: {task_class} routed to pool {small}"
        return Route(small, reason)
    if flags.pool_killed(wanted):
        other = smallest_pool(settings, flags, exclude=wanted)
        if other is None:
            raise NoPoolAvailable(f"pool {wanted} is switched off and no other pool is on")
        return Route(other, f"pool {wanted} is switched off: routed to pool {other}")
    return Route(wanted)


def serving_deployment(spec: PoolSpec) -> str | None:
    """The Serve deployment (``app/deployment``) whose replicas serve the pool: the one it
    names, else the local model's for a pool without upstream; None for an upstream outside
    Serve."""
    if spec.replicas_of is not None:
        return spec.replicas_of
    return None if spec.upstream is not None else f"{GENERATOR_APP_NAME}/{GENERATOR_DEPLOYMENT}"


def replica_factor(spec: PoolSpec, running: Mapping[str, int]) -> int:
    """How many replicas' worth of capacity the pool has: the running replicas of its
    deployment, at least one (a replica being replaced still has its work to finish, and a
    limiter at 0 would hold every step until its deadline); one when unknown."""
    deployment = serving_deployment(spec)
    if not spec.capacity_per_replica or deployment is None:
        return 1
    return max(1, running.get(deployment, 1))


def pool_rate(pool: str, settings: Settings, flags: FlagView,
              running: Mapping[str, int] | None = None) -> float:
    """Tokens/s of the pool's limiter: a ``rate.pool.*`` flag, else the stated capacity (per
    replica, times ``running``'s count for the pool's deployment) less the headroom (15 % by
    default), so the provider's own limit is never the one that bites."""
    override = flags.pool_rate(pool)
    if override is not None:
        return override
    spec = settings.pools.get(pool)
    capacity = (spec.capacity_tokens_per_s * replica_factor(spec, running or {}) if spec
                else min(p.capacity_tokens_per_s for p in settings.pools.values()))
    return capacity * (1.0 - settings.pool_headroom)


def estimate_tokens(messages: Sequence[Message], max_tokens: int) -> int:
    """Admission cost before the call: ~4 characters per prompt token plus a few per
    message for the chat template, plus the whole output allowance (the worst case; the
    result's actual usage is reconciled afterwards)."""
    prompt = sum((len(m["content"]) + 3) // 4 + 4 for m in messages)
    return prompt + max_tokens
