"""Create the catalogue's topics and the tables' changelogs idempotently at start, bring the
existing ones' retention in line with the settings, and wait for a broker to answer."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from clawstream.streams.kafka_access import client_config
from clawstream.streams.topics import CATALOGUE, TopicSpec, changelog_topics, with_retention

log = logging.getLogger(__name__)
RETENTION = "retention.ms"


@dataclass
class TopicChanges:
    """What ``ensure_topics`` did: topics created, and retention changed (name -> old, new)."""

    created: list[str] = field(default_factory=list)
    retention: dict[str, tuple[str, str]] = field(default_factory=dict)


TRANSIENT_ADMIN_ERRORS = frozenset({
    KafkaError._DESTROY_BROKER, KafkaError._TRANSPORT, KafkaError._TIMED_OUT,
    KafkaError._ALL_BROKERS_DOWN, KafkaError.REQUEST_TIMED_OUT,
    KafkaError.NOT_CONTROLLER, KafkaError.LEADER_NOT_AVAILABLE,
})


def is_transient(exc: KafkaException) -> bool:
    """True for the admin errors a cluster still settling gives (a broker handle dropped
    while the metadata changed, a controller moving, a timeout): asking again helps."""
    error = exc.args[0] if exc.args else None
    if not isinstance(error, KafkaError):
        return False
    return error.retriable() or error.code() in TRANSIENT_ADMIN_ERRORS


def ensure_topics(bootstrap: str, partitions: int, app_id: str,
                  retention_ms: Mapping[str, int] | None = None,
                  timeout_s: float = 30.0, *, replication_factor: int = 1,
                  min_insync_replicas: int = 1, attempts: int = 5,
                  sleep: Callable[[float], None] = time.sleep) -> TopicChanges:
    """Create the catalogue's and the worker tables' topics that are missing, with the
    catalogue's retention overridden by ``retention_ms`` (topic name -> ms); set the
    retention of existing topics to the same values. Nothing else of an existing topic is
    changed (partitions cannot shrink, and more would move conversations).

    New topics get ``replication_factor`` replicas and, above one replica,
    ``min.insync.replicas`` (with producers' acks=all, a record is acknowledged only once
    that many replicas hold it).

    A cluster whose brokers have just registered can drop a request while its metadata
    settles; transient errors are asked again (``attempts`` in all, with a fresh client),
    which is safe because each pass only creates what is still missing."""
    specs = with_retention(CATALOGUE + changelog_topics(app_id), retention_ms or {})
    changes = TopicChanges()

    def once() -> TopicChanges:
        _ensure_once(AdminClient(client_config(bootstrap)), specs, partitions,
                     timeout_s, replication_factor, min_insync_replicas, changes)
        return changes

    for attempt in range(1, attempts):
        try:
            return once()
        except KafkaException as exc:
            if not is_transient(exc):
                raise
            log.warning("creating topics failed (%s); asking again (%d of %d)",
                        exc, attempt + 1, attempts)
            sleep(min(5.0, 0.5 * 2 ** attempt))
    return once()


def _ensure_once(admin: AdminClient, specs: Sequence[TopicSpec], partitions: int,
                 timeout_s: float, replication_factor: int, min_insync_replicas: int,
                 changes: TopicChanges) -> None:
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    wanted = [
        NewTopic(s.name, num_partitions=s.partitions(partitions),
                 replication_factor=replication_factor,
                 config=_replicated(s.config(), min_insync_replicas))
        for s in specs
        if s.name not in existing
    ]
    if wanted:
        for name, future in admin.create_topics(wanted, operation_timeout=timeout_s).items():
            try:
                future.result()
                changes.created.append(name)
            except KafkaException as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise
    changes.retention.update(_align_retention(
        admin, [s for s in specs if s.name in existing], timeout_s))


def _replicated(config: dict[str, str], min_insync_replicas: int) -> dict[str, str]:
    if min_insync_replicas <= 1:
        return config
    return {**config, "min.insync.replicas": str(min_insync_replicas)}


def _align_retention(admin: AdminClient, specs: list[TopicSpec], timeout_s: float
                     ) -> dict[str, tuple[str, str]]:
    if not specs:
        return {}
    described = admin.describe_configs(
        [ConfigResource(ResourceType.TOPIC, s.name) for s in specs],
        request_timeout=timeout_s)
    current = {res.name: future.result()[RETENTION].value for res, future in described.items()}
    stale = {s.name: (current[s.name], str(s.retention_ms)) for s in specs
             if current[s.name] != str(s.retention_ms)}
    if not stale:
        return {}
    altered = admin.incremental_alter_configs(
        [ConfigResource(ResourceType.TOPIC, name, incremental_configs=[
            ConfigEntry(RETENTION, new, incremental_operation=AlterConfigOpType.SET)])
         for name, (_, new) in stale.items()],
        request_timeout=timeout_s)
    for future in altered.values():
        future.result()
    return stale


class LoginRefused(RuntimeError):
    """The brokers answer but will not let this process in: waiting does not help."""


def broker_answers(bootstrap: str, timeout_s: float = 2.0) -> bool:
    """True if a broker at ``bootstrap`` answers a metadata request within ``timeout_s``;
    LoginRefused if it refuses this process's login (or its lack of one)."""
    errors: list[KafkaError] = []
    said = _Said()
    config = client_config(bootstrap)
    admin = AdminClient({**config, "error_cb": errors.append,  # type: ignore[dict-item]
                         "logger": said})  # type: ignore[dict-item]
    try:
        admin.list_topics(timeout=timeout_s)
    except KafkaException:
        admin.poll(0)  # the error callbacks of what went wrong
        refusal = login_refusal(errors, said.lines, config)
        if refusal is not None:
            raise LoginRefused(f"Kafka at {bootstrap}: {refusal}") from None
        return False
    return True


class _Said(logging.Logger):
    """librdkafka's log lines of one probe (they say more than its error callbacks)."""

    def __init__(self) -> None:
        super().__init__("clawstream.kafka-probe")
        self.lines: list[str] = []

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        self.lines.append(str(msg) % args if args else str(msg))


def login_refusal(errors: list[KafkaError], said: list[str],
                  config: dict[str, Any]) -> str | None:
    """What a person must hear when the brokers refused a client: the wrong password, or
    a client without a login on brokers that ask for one. None: the brokers are away.

    A broker that wants a login answers an anonymous client's version request, then
    closes the connection at its first real request: "closed ... in state UP"."""
    user = config.get("sasl.username")
    for error in errors:
        if error.code() == KafkaError._AUTHENTICATION:
            return (f"the login of user {user!r} was refused ({error.str()}): check this "
                    "role's secret file or CLAWSTREAM_KAFKA_USERNAME/PASSWORD")
    if user is None and any("closed" in line and "in state UP" in line for line in said):
        return ("the brokers closed the connection of this client, which has no login: "
                "they ask for one (CLAWSTREAM_AUTH=true and the role's secret file)")
    return None


def wait_for_broker(bootstrap: str, *, base_s: float = 0.5, cap_s: float = 5.0,
                    report_every_s: float = 30.0,
                    sleep: Callable[[float], None] = time.sleep,
                    clock: Callable[[], float] = time.monotonic,
                    answers: Callable[[str], bool] = broker_answers) -> float:
    """Block until the broker answers, retrying with backoff (``base_s`` doubling up to
    ``cap_s``) and logging once every ``report_every_s``; returns the seconds waited.

    A process that needs the broker to start (a Faust worker cannot bootstrap without one)
    waits here instead of exiting, so a broker outage delays it rather than killing it."""
    started = clock()
    reported = started
    delay = base_s
    while not answers(bootstrap):
        now = clock()
        if now - reported >= report_every_s or now == started:
            log.warning("broker %s does not answer; waiting for it (%.0f s so far)",
                        bootstrap, now - started)
            reported = now
        sleep(delay)
        delay = min(cap_s, delay * 2)
    waited = clock() - started
    if waited > 0:
        log.info("broker %s answers after %.1f s", bootstrap, waited)
    return waited
