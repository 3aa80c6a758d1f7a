"""What the fault benchmarks (``recovery``, ``chaos``) share: a steady mixed load whose
side effects are counted, reading its answers back, counting effects, explaining gaps.

Half the requests run a mutating tool whose effect is counted in Redis per request (the
fault fixture ``fault-effect``), half the researcher flow on the simulated model. Requests
are queued, not awaited one by one, like a client that keeps producing while the broker is
away (its producer retries), so an outage shows up as a backlog, not as a paused client.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from aiokafka.partitioner import murmur2
from rich.table import Table

from benchmarks.common import console
from clawstream.config import Settings
from clawstream.deploy.load import counts
from clawstream.deploy.load.counts import collect_answers, integrity

__all__ = ["collect_answers", "count_effects", "integrity", "load"]

Record = dict[str, Any]
FAULT_ENV = {"CLAWSTREAM_FAULT_INJECTION": "true", "CLAWSTREAM_AGENT_MODULES": "fixtures.faults"}


def partition_of(key: str, partitions: int) -> int:
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def load(bootstrap: str, rate: float, stop: threading.Event, sent: list[Record],
         prefix: str = "rec", agents: Sequence[str] = ("fault-effect", "researcher")) -> int:
    """Send ``rate`` requests a second until ``stop``, taking turns over ``agents``
    (``fault-effect`` and ``researcher``; a stack without a model runs only the first);
    returns how many the broker never acknowledged (0 unless it was away longer than the
    producer's message timeout)."""
    from clawstream.streams.publisher import (
        Delivery,
        Publisher,
        PublishError,
        new_request,
        publish_request,
    )

    publisher = Publisher(bootstrap)
    deliveries: list[Delivery] = []
    run = uuid.uuid4().hex[:6]
    i = 0
    next_at = time.monotonic()
    while not stop.is_set():
        conversation = f"{prefix}-{run}-{i}"
        # Many users of one tenant, each well under the entrance limits.
        who = {"tenant_id": "bench", "user_id": f"user-{i % 50}"}
        if agents[i % len(agents)] == "researcher":
            request = new_request(agent="researcher", conversation_id=conversation,
                                  text=f"Where are tool results cached? #{i}", **who)
        else:
            args = {"counter": conversation}
            request = new_request(agent="fault-effect", conversation_id=conversation,
                                  text="apply", options={"args0": json.dumps(args)}, **who)
        # Queued, not awaited: a client that goes on while the broker is away (the
        # producer retries until its message timeout, 5 min).
        deliveries.append(publish_request(publisher, request))
        sent.append(dict(request))
        i += 1
        next_at += 1 / rate
        stop.wait(max(0.0, next_at - time.monotonic()))
    with contextlib.suppress(PublishError):  # counted below, per message
        publisher.close(120.0)
    return sum(not d.done() or d.exception() is not None for d in deliveries)


def count_effects(settings: Settings, sent: list[Record]) -> list[int]:
    """How often each ``fault-effect`` request's effect was applied (must be once each)."""
    return counts.count_effects(settings, [q["conversation_id"] for q in sent
                                           if q["agent"] == "fault-effect"])


def explain_missing(bootstrap: str, missing: set[str], sent: list[Record],
                    partitions: int) -> None:
    """What the event log says about requests that got no answer: where they stopped."""
    from clawstream.streams.subscriber import read_topic
    from clawstream.streams.topics import DLQ, EVENTS, REQUESTS_INTERACTIVE

    if not missing:
        return
    trail: dict[str, list[str]] = defaultdict(list)
    where = {q["request_id"]: partition_of(q["conversation_id"], partitions) for q in sent
             if q["request_id"] in missing}
    for topic in (REQUESTS_INTERACTIVE.name, EVENTS.name, DLQ.name):
        for name, e in read_topic(bootstrap, topic, timeout_s=5):
            if e.get("request_id") in missing:
                trail[e["request_id"]].append(f"{topic}:{e.get('event_type') or name}")
    for request_id in sorted(missing):
        console.print(f"[red]no answer[/] {request_id} (partition {where.get(request_id)}): "
                      f"{' → '.join(trail[request_id])}")


def conclude(table: Table, answers: dict[str, list[Record]], counts: dict[str, int],
             reasons_shown: int = 8) -> None:
    """Print the table and the commonest reasons of answers that are not ``ok``; exit with
    an error if a request was lost or answered twice."""
    console.print(table)
    reasons = Counter(f"{v[0]['status']}: {(v[0]['reason'] or '')[:100]}"
                      for v in answers.values() if v[0]["status"] != "ok")
    for reason, count in reasons.most_common(reasons_shown):
        console.print(f"  {count} x {reason}")
    if counts["requests lost (must be 0)"] or counts["answers doubled (must be 0)"]:
        raise SystemExit("requests were lost or answered twice")
