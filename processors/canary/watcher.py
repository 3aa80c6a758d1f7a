"""The automatic rollback: a small thread in every worker that watches the canaries.

Why in the worker, not in the CLI: a canary is only safe if somebody watches it the whole
time it takes traffic, and the workers are exactly what runs while traffic flows; a CLI
watcher is a process someone must remember to keep running, and a canary left without it
would go on failing its share of conversations. Why every worker and not a leader: the
workers have no leader, and the rule it needs is cheap. Each watcher reads *all* partitions
of the answer topic (a plain consumer with no group, like the flag reader: a group would
split the answers between workers and each would judge on a part), keeps per version the
figures of :mod:`stats` for the answers since the canary was set, and every
``canary_watch_interval_s`` judges with :func:`stats.rollback_reason`. The first worker to
decide claims the rollback in Redis (``SET NX`` on agent, candidate and the canary's start),
then writes the rolled-back rule and a ``canary_rolled_back`` event with the figures; the
others see the claim and do nothing. If Redis cannot answer, the watcher rolls back anyway:
a rule written twice is the same rule, while a canary left failing is the harm to avoid.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis
from confluent_kafka import OFFSET_END, Consumer, TopicPartition

from clawstream.config import Settings
from clawstream.processors.agents import Catalog
from clawstream.processors.canary.control import apply_route
from clawstream.processors.canary.routing import named_versions
from clawstream.processors.canary.rule import Route, routes_from
from clawstream.processors.canary.stats import Thresholds, VersionStats, rollback_reason
from clawstream.processors.flow.flags import FlagView
from clawstream.processors.keys import canary_rollback_key
from clawstream.schemas.records import AgentAnswer
from clawstream.streams.kafka_access import client_config
from clawstream.streams.subscriber import poll_answer
from clawstream.streams.topics import ANSWERS

log = logging.getLogger(__name__)


@dataclass
class Watched:
    """One canary under watch: its rule, the two versions, and their figures so far."""

    route: Route
    current: str
    candidate: str
    stats: dict[str, VersionStats] = field(default_factory=dict)

    def add(self, answer: AgentAnswer) -> None:
        if answer["agent_version"] in (self.current, self.candidate):
            self.stats.setdefault(answer["agent_version"], VersionStats()).add(answer)

    def verdict(self, limits: Thresholds) -> str | None:
        return rollback_reason(self.stats.get(self.current, VersionStats()),
                               self.stats.get(self.candidate, VersionStats()), limits)


def watched_canaries(flags: FlagView, catalog: Catalog) -> dict[str, Watched]:
    """The canaries to watch: a candidate deployed here taking a share, rollback on."""
    found: dict[str, Watched] = {}
    for agent, route in routes_from(flags.values).items():
        versions = catalog.versions(agent)
        if not (route.canary and route.auto_rollback and versions):
            continue
        current, candidate = named_versions(route, versions)
        if candidate is not None:
            found[agent] = Watched(route, current, candidate)
    return found


class CanaryWatcher:
    """Follows the answer topic in a daemon thread and rolls back failing candidates."""

    def __init__(self, settings: Settings, catalog: Catalog, flags: Callable[[], FlagView],
                 worker: str) -> None:
        self._settings = settings
        self._catalog = catalog
        self._flags = flags
        self._worker = worker
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._redis = redis.Redis.from_url(settings.redis_url, socket_timeout=2.0,
                                           socket_connect_timeout=2.0)
        self._done: set[tuple[str, str, int]] = set()

    def start(self) -> CanaryWatcher:
        if self._thread is None and self._settings.canary_watch:
            self._thread = threading.Thread(target=self._run, name="canary-watcher",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._follow()
            except Exception:  # the broker went away: start over (figures are re-read)
                log.exception("canary watcher failed; starting over")
                self._stop.wait(2.0)

    def _follow(self) -> None:
        consumer = Consumer({**client_config(self._settings.bootstrap_servers),
                             "group.id": f"clawstream-canary-{self._worker}",
                             "enable.auto.commit": False, "auto.offset.reset": "latest"})
        watched: dict[str, Watched] = {}
        try:
            while not self._stop.is_set():
                now = watched_canaries(self._flags(), self._catalog)
                if {a: w.route for a, w in now.items()} != {
                        a: w.route for a, w in watched.items()}:
                    watched = now
                    self._seek(consumer, watched)
                self._read(consumer, watched, self._settings.canary_watch_interval_s)
                for agent, canary in watched.items():
                    self._judge(agent, canary)
        finally:
            consumer.close()

    def _seek(self, consumer: Consumer, watched: dict[str, Watched]) -> None:
        """Read from the earliest start of the canaries watched (figures start afresh)."""
        if not watched:
            consumer.unassign()
            return
        since = min(w.route.since_ms for w in watched.values())
        partitions = consumer.list_topics(ANSWERS.name, timeout=10.0).topics[
            ANSWERS.name].partitions
        wanted = [TopicPartition(ANSWERS.name, p, since) for p in partitions]
        found = consumer.offsets_for_times(wanted, timeout=10.0)
        consumer.assign([TopicPartition(ANSWERS.name, tp.partition,
                                        tp.offset if tp.offset >= 0 else OFFSET_END)
                         for tp in found])

    def _read(self, consumer: Consumer, watched: dict[str, Watched], for_s: float) -> None:
        until = time.monotonic() + for_s
        while not self._stop.is_set() and time.monotonic() < until:
            if not watched:
                self._stop.wait(until - time.monotonic())
                return
            answer = poll_answer(consumer, min(0.5, max(0.0, until - time.monotonic())))
            if answer is None:
                continue
            canary = watched.get(answer["agent"])
            if (canary is not None and answer["answered_at_ms"] >= canary.route.since_ms
                    and answer["tenant_id"] != self._settings.eval_tenant):
                canary.add(answer)

    def _judge(self, agent: str, canary: Watched) -> None:
        key = (agent, canary.candidate, canary.route.since_ms)
        reason = canary.verdict(Thresholds.of(canary.route, self._settings))
        if reason is None or key in self._done:
            return
        self._done.add(key)
        if not self._claim(key):
            return
        current = canary.stats[canary.current]
        candidate = canary.stats[canary.candidate]
        log.warning("rolling back %s %s: %s", agent, canary.candidate, reason)
        apply_route(self._settings.bootstrap_servers, agent, canary.route.rolled_back(),
                    "canary_rolled_back", f"auto-rollback:{self._worker}", {
                        "reason": reason, "rolled_back": canary.candidate,
                        "candidate_requests": candidate.interactions,
                        "candidate_bad_rate": f"{candidate.bad_rate:.4f}",
                        "candidate_p95_ms": f"{candidate.p(0.95):.0f}",
                        "current_requests": current.interactions,
                        "current_bad_rate": f"{current.bad_rate:.4f}",
                        "current_p95_ms": f"{current.p(0.95):.0f}",
                        "canary_since_ms": canary.route.since_ms})

    def _claim(self, key: tuple[str, str, int]) -> bool:
        """Whether this worker does the rollback (another worker's claim: no)."""
        try:
            return bool(self._redis.set(canary_rollback_key(*key), self._worker, nx=True,
                                        ex=7 * 24 * 3600))
        except redis.RedisError as exc:
            log.warning("canary rollback claim failed (%s): rolling back anyway", exc)
            return True
