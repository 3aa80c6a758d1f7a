"""Reading a load run back from the topics and Redis: every answer of every request sent,
effects applied per request, and the counts that must be 0. Shared with the fault
benchmarks (``benchmarks/faultload.py``)."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from clawstream.config import Settings

Record = dict[str, Any]
EFFECTS_KEY = "tool:fault:effects:{counter}"
"""Redis counter of the effect the ``fault-effect`` fixture tool applies once per key."""
LOST, DOUBLED, DUPLICATE_EFFECTS, MISSING_EFFECTS = (
    "requests lost (must be 0)", "answers doubled (must be 0)",
    "duplicate effects (must be 0)", "missing effects")


def collect_answers(settings: Settings, sent: list[Record]) -> dict[str, list[Record]]:
    """Every answer to a request of ``sent`` (a list per request: more than one is a double
    answer), read until all are answered or the last deadline has passed."""
    from clawstream.streams.subscriber import read_topic
    from clawstream.streams.topics import ANSWERS

    wanted = {r["request_id"] for r in sent}
    answers: dict[str, list[Record]] = defaultdict(list)
    if not wanted:
        return answers
    # Every request is answered by its deadline at the latest: wait that long, no more.
    patience_s = max(30.0, max(q["deadline_ms"] for q in sent) / 1000 - time.time() + 15)
    for _, record in read_topic(settings.bootstrap_servers, ANSWERS.name,
                                timeout_s=patience_s,
                                until=lambda _n, _a: wanted <= answers.keys()):
        answer: Record = dict(record)
        if answer.get("request_id") in wanted:
            answers[answer["request_id"]].append(answer)
    # Read on to the end, so a second answer that came after the first is seen too.
    for _, record in read_topic(settings.bootstrap_servers, ANSWERS.name, timeout_s=3):
        answer = dict(record)
        rid = str(answer.get("request_id"))
        if rid in wanted and answer not in answers[rid]:
            answers[rid].append(answer)
    return answers


def count_effects(settings: Settings, conversations: Iterable[str]) -> list[int]:
    """How often each ``fault-effect`` request's effect was applied (must be once each);
    the tool counts under the request's conversation id."""
    import redis

    r = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    return [int(r.get(EFFECTS_KEY.format(counter=c)) or 0) for c in conversations]


def integrity(sent: list[Record], answers: dict[str, list[Record]], effects: list[int]
              ) -> dict[str, int]:
    """The counts that must be 0 (and the missing effects: applied never though answered)."""
    return {
        LOST: sum(1 for q in sent if q["request_id"] not in answers),
        DOUBLED: sum(len(v) - 1 for v in answers.values()),
        DUPLICATE_EFFECTS: sum(max(0, e - 1) for e in effects),
        MISSING_EFFECTS: sum(e == 0 for e in effects),
    }


def dead_letters(settings: Settings, request_ids: set[str]) -> list[Record]:
    """The dead letters of ``request_ids`` on the DLQ topic."""
    from clawstream.streams.subscriber import read_topic
    from clawstream.streams.topics import DLQ

    letters: list[Record] = [dict(r) for _, r in read_topic(settings.bootstrap_servers,
                                                            DLQ.name, timeout_s=3)]
    return [r for r in letters if r.get("request_id") in request_ids]
