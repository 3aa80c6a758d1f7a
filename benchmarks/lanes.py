"""``just bench lanes``: a batch flood plus a steady interactive stream, SIMULATED model.

Two phases in one invocation, same stack: (1) the interactive stream alone, (2) the same
stream while a batch flood is queued. Prints interactive model-step queue wait p50/p95 in
both phases (their ratio is the figure: how much the flood slows the interactive lane),
batch throughput, and the achieved vs configured tokens/s of the limiter (from its
admission log, see processors.flow.limiter.measured_rate).
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from typing import Any

import redis
import typer
from rich.table import Table

from benchmarks.common import bench_stack, console, pct

RATE = 1500.0


def _send(publisher: Any, lane: str, tenant: str, n: int) -> list[dict[str, Any]]:
    from clawstream.streams.publisher import new_request, publish_request

    out = []
    for i in range(n):
        req = new_request(agent="chat", conversation_id=uuid.uuid4().hex, lane=lane,
                          tenant_id=tenant, text=f"{lane} question {i}")
        publish_request(publisher, req)
        out.append(req)
    return out


def _collect(settings: Any, wanted: set[str], timeout_s: float) -> dict[str, dict[str, Any]]:
    from clawstream.streams.subscriber import read_topic
    from clawstream.streams.topics import ANSWERS

    got: dict[str, dict[str, Any]] = {}
    for _, answer in read_topic(settings.bootstrap_servers, ANSWERS.name, timeout_s=timeout_s,
                                until=lambda _n, r: wanted <= got.keys() | {r["request_id"]}):
        if answer["request_id"] in wanted:
            got[answer["request_id"]] = answer
    return got


def _interactive(settings: Any, publisher: Any, n: int, gap_s: float
                 ) -> tuple[list[float], list[float]]:
    """(model-step queue waits, end-to-end times) of a steady interactive stream."""
    reqs = []
    for _ in range(n):
        reqs += _send(publisher, "interactive", "web", 1)
        time.sleep(gap_s)  # a steady stream, not a synchronisation
    answers = _collect(settings, {r["request_id"] for r in reqs}, 120)
    waits = [e["queue_wait_ms"] for a in answers.values() for e in a["timeline"]
             if e["step_type"] == "model"]
    return waits, [a["answered_at_ms"] - a["created_at_ms"] for a in answers.values()]


def _ratio(during: list[float], alone: list[float], q: float) -> str:
    return f"{pct(during, q) / max(pct(alone, q), 1):.2f} x"


def main(interactive: int = 40, flood: int = 400, gap_ms: float = 100.0,
         keep_stack: bool = False) -> None:
    from clawstream.processors.flow.flags import set_flag
    from clawstream.processors.flow.limiter import measured_rate
    from clawstream.processors.keys import admissions_key
    from clawstream.streams.publisher import Publisher

    with bench_stack(keep=keep_stack) as settings:
        set_flag(settings.bootstrap_servers, "rate.pool.small", f"{RATE:g}", by="bench")
        # this bench measures lanes and the tokens/s limiter, not the entrance buckets
        for name in ("limit.tenant.web", "limit.tenant.bulk", "limit.user.anonymous"):
            set_flag(settings.bootstrap_servers, name, "100000/100000", by="bench")
        publisher = Publisher(settings.bootstrap_servers)
        _interactive(settings, publisher, 5, 0.05)  # warm-up
        alone, alone_e2e = _interactive(settings, publisher, interactive, gap_ms / 1000)
        t0 = time.time()
        batch = _send(publisher, "batch", "bulk", flood)
        during, during_e2e = _interactive(settings, publisher, interactive, gap_ms / 1000)
        done = _collect(settings, {r["request_id"] for r in batch}, 300)
        batch_s = max(a["answered_at_ms"] for a in done.values()) / 1000 - t0
        log = [json.loads(e) for e in redis.Redis.from_url(settings.redis_url).lrange(
            admissions_key("small"), 0, -1)]
        # the flood keeps the limiter saturated: measure over its admissions only
        ours = [e for e in log if e["rate"] == RATE and e["admitted_at_ms"] >= t0 * 1000]
        table = Table("interactive lane", "p50 ms", "p95 ms")
        table.add_row("model-step queue wait: alone", f"{pct(alone, 0.5):.1f}",
                      f"{pct(alone, 0.95):.1f}")
        table.add_row(f"model-step queue wait: during a {flood}-request batch flood",
                      f"{pct(during, 0.5):.1f}",
                      f"{pct(during, 0.95):.1f}")
        table.add_row("ratio during / alone", _ratio(during, alone, 0.5),
                      _ratio(during, alone, 0.95))
        table.add_row("[dim]interactive end to end: alone[/]", f"{pct(alone_e2e, 0.5):.1f}",
                      f"{pct(alone_e2e, 0.95):.1f}")
        table.add_row("[dim]interactive end to end: during the flood[/]",
                      f"{pct(during_e2e, 0.5):.1f}", f"{pct(during_e2e, 0.95):.1f}")
        table.add_row("[dim]ratio during / alone[/]", _ratio(during_e2e, alone_e2e, 0.5),
                      _ratio(during_e2e, alone_e2e, 0.95))
        console.print(table)
        statuses = [a["status"] for a in done.values()]
        console.print(f"batch statuses: ok {statuses.count('ok')}, other "
                      f"{len(statuses) - statuses.count('ok')}")
        reasons = Counter(f"{a['status']}: {(a['reason'] or '')[:70]}" for a in done.values()
                          if a["status"] != "ok")
        for reason, count in reasons.most_common(5):
            console.print(f"  {count} x {reason}")
        console.print(f"batch: {len(done)}/{flood} answered in {batch_s:.1f} s = "
                      f"{len(done) / batch_s:.1f} requests/s")
        console.print(f"limiter (pool small): configured {RATE:.0f} tokens/s, achieved "
                      f"{measured_rate(ours):.0f} tokens/s over {len(ours)} admissions")


if __name__ == "__main__":
    typer.run(main)
