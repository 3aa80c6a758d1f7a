"""The entrance: per-user and per-tenant request rates, and per-tenant spend windows.

Both are checked by the coordinator before a request starts (it is the first processor
a request meets, and every coordinator replica shares the same Redis logs). Rates count
each request at its arrival time, not when it is handled (:mod:`arrivals`), so a backlog
after an outage on our side is not rejected. A request over a limit is answered
``rejected`` with a reason that says when to retry; it is never dropped or parked.
Rejections by a limit do not enter the dedup table, so the client may retry with the same
idempotency key.
"""

from __future__ import annotations

import math
import time

import redis.asyncio as aioredis

from clawstream.config import Settings
from clawstream.processors.flow.arrivals import ArrivalWindows
from clawstream.processors.flow.flags import FlagView
from clawstream.processors.keys import arrivals_key, tenant_budget_key
from clawstream.processors.validation import Rejection
from clawstream.schemas.records import AgentRequest, ReasonKind


def arrival_windows(redis: aioredis.Redis, settings: Settings) -> ArrivalWindows:
    """The entrance's arrival logs, with the settings' bounds on a client's clock."""
    return ArrivalWindows(redis, settings.entrance_clock_skew_s, settings.entrance_reorder_s)


async def check_entrance(windows: ArrivalWindows, settings: Settings, flags: FlagView,
                         request: AgentRequest) -> Rejection | None:
    """Count the request at its arrival time against the user's limit, then the tenant's;
    the first one full rejects."""
    user_id = request["user_id"] or "anonymous"
    checks: tuple[tuple[str, ReasonKind, str, float, float], ...] = (
        ("user", "user_rate_limit", user_id, settings.user_rate_per_s, settings.user_burst),
        ("tenant", "tenant_rate_limit", request["tenant_id"], settings.tenant_rate_per_s,
         settings.tenant_burst),
    )
    for kind, reason_kind, name, rate, burst in checks:
        rate, burst = flags.pair(f"limit.{kind}.{name}") or (rate, burst)
        admission = await windows.admit(arrivals_key(kind, name), request["request_id"],
                                        int(request["created_at_ms"]), rate, burst)
        if not admission.allowed:
            return Rejection(
                reason_kind,
                f"{kind} {name} is over its limit of {rate:g} requests/s (burst {burst:g}); "
                f"retry after {admission.retry_after_s:.2f} s",
                admission.retry_after_s)
    return None


def _window_start(settings: Settings, now_s: float) -> int:
    window = settings.tenant_budget_window_s
    return int(now_s // window * window)


async def check_tenant_budget(redis: aioredis.Redis, settings: Settings, flags: FlagView,
                              tenant_id: str, now_s: float | None = None) -> Rejection | None:
    """Reject once the tenant has spent its tokens or cost in the current window."""
    now_s = time.time() if now_s is None else now_s
    start = _window_start(settings, now_s)
    tokens_max, cost_max = flags.pair(f"budget.tenant.{tenant_id}") or (
        settings.tenant_budget_tokens, settings.tenant_budget_cost_usd)
    raw = await redis.hmget(tenant_budget_key(tenant_id, start), ["tokens", "cost_usd"])
    tokens = float(raw[0] or 0)
    cost = float(raw[1] or 0)
    if tokens < tokens_max and cost < cost_max:
        return None
    retry = max(0.0, start + settings.tenant_budget_window_s - now_s)
    spent = (f"{tokens:.0f} of {tokens_max:.0f} tokens" if tokens >= tokens_max
             else f"${cost:.4f} of ${cost_max:.4f}")
    return Rejection("tenant_budget",
                     f"tenant {tenant_id} spent {spent} in this "
                     f"{settings.tenant_budget_window_s} s window; retry after {retry:.0f} s",
                     math.ceil(retry))


async def record_tenant_usage(redis: aioredis.Redis, settings: Settings, tenant_id: str,
                              tokens: int, cost_usd: float, now_s: float | None = None) -> None:
    """Add a finished step's usage to the tenant's current window (expires with it)."""
    now_s = time.time() if now_s is None else now_s
    key = tenant_budget_key(tenant_id, _window_start(settings, now_s))
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hincrby(key, "tokens", tokens)
        pipe.hincrbyfloat(key, "cost_usd", cost_usd)
        pipe.expire(key, settings.tenant_budget_window_s * 2)
        await pipe.execute()
