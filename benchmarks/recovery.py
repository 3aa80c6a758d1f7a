"""``just bench recovery``: steady load on two workers, SIGKILL one, count what it cost.

Half the requests run a mutating tool whose effect is counted in Redis per request (the
fault fixture ``fault-effect``), half the researcher flow on the simulated model. After a
warm-up one worker is SIGKILLed; the load goes on until every request is answered.

Printed: the time until the group is processing again (from the kill to the first answer
on each partition the dead worker owned, the slowest of them), set against the steady
state's per-partition answer gap measured before the kill in the same run; requests lost
(must be 0); answers doubled (must be 0); duplicate effects (must be 0).
"""

from __future__ import annotations

import json
import statistics
import threading
import time
import uuid
from collections import Counter, defaultdict
from itertools import pairwise
from typing import Any

import typer
from aiokafka.partitioner import murmur2
from rich.table import Table

from benchmarks.common import bench_stack, console

Record = dict[str, Any]


def _partition(key: str, partitions: int) -> int:
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def _load(bootstrap: str, rate: float, stop: threading.Event, sent: list[Record]) -> None:
    from clawstream.streams.publisher import Publisher, new_request, publish_request

    publisher = Publisher(bootstrap)
    run = uuid.uuid4().hex[:6]
    i = 0
    next_at = time.monotonic()
    while not stop.is_set():
        conversation = f"rec-{run}-{i}"
        # Many users of one tenant, each well under the entrance limits.
        who = {"tenant_id": "bench", "user_id": f"user-{i % 50}"}
        if i % 2:
            request = new_request(agent="researcher", conversation_id=conversation,
                                  text=f"Where are tool results cached? #{i}", **who)
        else:
            args = {"counter": conversation}
            request = new_request(agent="fault-effect", conversation_id=conversation,
                                  text="apply", options={"args0": json.dumps(args)}, **who)
        publish_request(publisher, request)
        sent.append(request)
        i += 1
        next_at += 1 / rate
        stop.wait(max(0.0, next_at - time.monotonic()))


def main(rate: float = 6.0, warmup_s: float = 20.0, after_s: float = 40.0,
         keep_stack: bool = False) -> None:
    import redis

    from clawstream.deploy.local import worker as worker_proc
    from clawstream.processors import faust_fence, stall
    from clawstream.streams.subscriber import read_topic
    from clawstream.streams.topics import ANSWERS
    from fixtures.faults import EFFECTS_KEY

    env = {"CLAWSTREAM_FAULT_INJECTION": "true", "CLAWSTREAM_AGENT_MODULES": "fixtures.faults"}
    with bench_stack(workers=2, env=env, keep=keep_stack) as settings:
        console.print(f"[bold]bench recovery[/]: {rate:g} requests/s, 2 workers, SIGKILL "
                      f"worker-1 after {warmup_s:g} s, load goes on {after_s:g} s; session "
                      f"timeout {settings.worker_session_timeout_s:g} s")
        sent: list[Record] = []
        stop = threading.Event()
        loader = threading.Thread(target=_load, args=(settings.bootstrap_servers, rate, stop,
                                                       sent))
        loader.start()
        stop.wait(warmup_s)
        killed_at = time.time() * 1000
        owned = _owned_partitions(settings, 1)
        worker_proc.kill(settings, 1)
        console.print(f"SIGKILLed worker-1 (it owned partitions {sorted(owned)})")
        stop.wait(after_s)
        stop.set()
        loader.join()
        wanted = {r["request_id"] for r in sent}
        answers: dict[str, list[Record]] = defaultdict(list)
        # Every request is answered by its deadline at the latest: wait that long, no more.
        patience_s = max(30.0, max(q["deadline_ms"] for q in sent) / 1000 - time.time() + 15)
        for _, answer in read_topic(settings.bootstrap_servers, ANSWERS.name,
                                    timeout_s=patience_s,
                                    until=lambda _n, a: wanted <= answers.keys()):
            if answer["request_id"] in wanted:
                answers[answer["request_id"]].append(answer)
        _explain_missing(settings.bootstrap_servers, wanted - answers.keys(), sent,
                         settings.partitions)
        r = redis.Redis(port=settings.redis_port, decode_responses=True)
        effects = [int(r.get(EFFECTS_KEY.format(counter=q["conversation_id"])) or 0)
                   for q in sent if q["agent"] == "fault-effect"]
        survivor = worker_proc.log_file(settings, 0).read_text(errors="replace")
        healed = {"records fetched again, not dropped": survivor.count(faust_fence.FETCHED_AGAIN),
                  "survivor restarted: stalled": survivor.count(stall.STALLED),
                  "survivor restarted: records dropped by Faust":
                      survivor.count(faust_fence.DROPPED)}
        report(sent, answers, effects, killed_at, owned, settings.partitions, healed)


def _explain_missing(bootstrap: str, missing: set[str], sent: list[Record],
                     partitions: int) -> None:
    """What the event log says about requests that got no answer: where they stopped."""
    from clawstream.streams.subscriber import read_topic
    from clawstream.streams.topics import DLQ, EVENTS, REQUESTS_INTERACTIVE

    if not missing:
        return
    trail: dict[str, list[str]] = defaultdict(list)
    where = {q["request_id"]: _partition(q["conversation_id"], partitions) for q in sent
             if q["request_id"] in missing}
    for topic in (REQUESTS_INTERACTIVE.name, EVENTS.name, DLQ.name):
        for name, e in read_topic(bootstrap, topic, timeout_s=5):
            if e.get("request_id") in missing:
                trail[e["request_id"]].append(f"{topic}:{e.get('event_type') or name}")
    for request_id in sorted(missing):
        console.print(f"[red]no answer[/] {request_id} (partition {where.get(request_id)}): "
                      f"{' → '.join(trail[request_id])}")


def _owned_partitions(settings: Any, index: int) -> set[int]:
    """Partitions of the coordinator's topics the worker owns (its /ready page says)."""
    import httpx

    url = f"http://127.0.0.1:{settings.worker_web_port + index}/ready"
    return set(httpx.get(url, timeout=5).json()["partitions"])


def report(sent: list[Record], answers: dict[str, list[Record]], effects: list[int],
           killed_at: float, owned: set[int], partitions: int,
           healed: dict[str, int]) -> None:
    by_partition: dict[int, list[float]] = defaultdict(list)
    for reqs in answers.values():
        a = reqs[0]
        by_partition[_partition(a["conversation_id"], partitions)].append(a["answered_at_ms"])
    gaps, resumed = [], {}
    for p, times in by_partition.items():
        times.sort()
        before = [t for t in times if t < killed_at]
        gaps += [b - a for a, b in pairwise(before)]
        after = [t for t in times if t >= killed_at]
        if after:
            resumed[p] = after[0] - killed_at
    stalled = {p: resumed[p] for p in (owned or resumed.keys()) if p in resumed}
    recovery_ms = max(stalled.values()) if stalled else float("nan")
    steady_gap = statistics.median(gaps) if gaps else float("nan")
    lost = sum(1 for q in sent if q["request_id"] not in answers)
    doubled = sum(len(v) - 1 for v in answers.values())
    table = Table("figure", "value", title="bench recovery")
    table.add_row("requests sent", str(len(sent)))
    ok = sum(v[0]["status"] == "ok" for v in answers.values())
    table.add_row("answered (ok / other)", f"{ok} / {len(answers) - ok}")
    table.add_row("requests lost (must be 0)", str(lost))
    table.add_row("answers doubled (must be 0)", str(doubled))
    table.add_row("duplicate effects (must be 0)", str(sum(max(0, e - 1) for e in effects)))
    table.add_row("missing effects", str(sum(e == 0 for e in effects)))
    table.add_row("recovery: kill → first answer, slowest partition",
                  f"{recovery_ms / 1000:.1f} s")
    table.add_row("steady state: median gap between answers of a partition",
                  f"{steady_gap / 1000:.2f} s")
    table.add_row("ratio recovery / steady gap", f"{recovery_ms / steady_gap:.0f} x")
    for figure, count in healed.items():
        table.add_row(figure, str(count))
    console.print(table)
    reasons = Counter(f"{v[0]['status']}: {(v[0]['reason'] or '')[:80]}"
                      for v in answers.values() if v[0]["status"] != "ok")
    for reason, count in reasons.most_common(5):
        console.print(f"  {count} x {reason}")
    if lost or doubled:
        raise SystemExit("requests were lost or answered twice")


if __name__ == "__main__":
    typer.run(main)
