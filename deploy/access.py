"""Least privilege: what each role may do on Kafka and on Redis, defined once.

`up` turns this into SCRAM users with ACLs on the broker and ACL users on Redis
(deploy/local/credentials.py); the cluster manifests carry the same roles. A role is a
component, not a person: the worker that runs the coordinator, the tool executors and the
inference dispatcher in one process (the local default) is the union of those three; a
worker started as one of them (``CLAWSTREAM_ROLE=tools``) runs and may do only that part.
Only ``admin`` (``up`` itself, the test harness and ``credentials rotate``) creates topics,
users and ACLs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from clawstream.processors.app import WORKER_PARTS, WorkerPart, worker_app_id, worker_parts
from clawstream.streams import topics

Role = Literal["admin", "worker", "coordinator", "tools", "inference", "gateway", "operator",
               "analyst"]
ROLES: Final[tuple[Role, ...]] = ("admin", "worker", "coordinator", "tools", "inference",
                                  "gateway", "operator", "analyst")

READ: Final = ("READ", "DESCRIBE")
WRITE: Final = ("WRITE", "DESCRIBE")

# Throw-away consumer groups of readers that never commit (streams/subscriber.py), the flag
# readers (processors/flow/flags.py) and the canary watchers (processors/canary/watcher.py).
READER_GROUPS: Final = "clawstream-reader-"
FLAG_GROUPS: Final = "clawstream-flags-"
CANARY_GROUPS: Final = "clawstream-canary-"


@dataclass(frozen=True)
class Grant:
    """Allow ``operations`` on a Kafka resource: a topic, a consumer group or the cluster."""
    kind: Literal["topic", "group", "cluster"]
    name: str
    operations: tuple[str, ...]
    prefixed: bool = False


def _topics(operations: tuple[str, ...], *names: str) -> tuple[Grant, ...]:
    return tuple(Grant("topic", name, operations) for name in names)


RESULTS, ANSWERS, EVENTS, DELTAS, DLQ, FLAGS = (t.name for t in (
    topics.RESULTS, topics.ANSWERS, topics.EVENTS, topics.DELTAS, topics.DLQ,
    topics.CONTROL_FLAGS))
INTERACTIVE = topics.REQUESTS_INTERACTIVE.name
REQUEST_TOPICS: Final = (INTERACTIVE, topics.REQUESTS_BATCH.name)
COMMAND_TOPICS: Final = (topics.TOOL_REQUESTS.name, topics.INFERENCE_REQUESTS.name,
                         topics.INFERENCE_REQUESTS_BATCH.name)
ALL_TOPICS: Final = (*REQUEST_TOPICS, *COMMAND_TOPICS, RESULTS, ANSWERS,
                     EVENTS, DELTAS, DLQ, FLAGS)


def _executor(command_topics: tuple[str, ...], app_id: str) -> tuple[Grant, ...]:
    """A step executor: takes its commands, writes results, deltas, events and dead letters,
    reads the flags."""
    return (*_topics(READ, *command_topics, FLAGS),
            *_topics(WRITE, RESULTS, DELTAS, EVENTS, DLQ))


def _worker_app(app_id: str, parts: tuple[WorkerPart, ...]) -> tuple[Grant, ...]:
    """The Faust app's consumer group, its own topics (changelogs, the assignor's leader
    topic, which Faust creates) and the flag readers' groups."""
    faust_id = worker_app_id(app_id, parts)
    return (Grant("group", faust_id, READ),
            Grant("topic", f"{faust_id}-", (*READ, "WRITE", "CREATE"), prefixed=True),
            Grant("group", FLAG_GROUPS, READ, prefixed=True))


def _part(part: WorkerPart, app_id: str) -> tuple[Grant, ...]:
    if part == "coordinator":
        return (*_topics(READ, *REQUEST_TOPICS, RESULTS, FLAGS, ANSWERS),
                *_topics(WRITE, *COMMAND_TOPICS, RESULTS, EVENTS, ANSWERS, DLQ, FLAGS,
                         *REQUEST_TOPICS),  # a sub-agent's request
                Grant("group", READER_GROUPS, READ, prefixed=True),
                Grant("group", CANARY_GROUPS, READ, prefixed=True))
    if part == "tools":
        return _executor((topics.TOOL_REQUESTS.name,), app_id)
    return _executor((topics.INFERENCE_REQUESTS.name, topics.INFERENCE_REQUESTS_BATCH.name), app_id)


def kafka_grants(role: Role, app_id: str) -> tuple[Grant, ...]:
    """The ACLs of ``role`` on a stack whose worker app is ``app_id``; admin is a super
    user and has none."""
    readers = Grant("group", READER_GROUPS, READ, prefixed=True)
    if role in ("worker", *WORKER_PARTS):
        parts = worker_parts(role)
        grants = (g for part in parts for g in _part(part, app_id))
        return tuple(dict.fromkeys((*grants, *_worker_app(app_id, parts))))
    if role == "gateway":
        return (*_topics(WRITE, *REQUEST_TOPICS),
                *_topics(READ, ANSWERS, EVENTS, DELTAS,
                         INTERACTIVE),
                Grant("group", f"{app_id}-gateway-recorder", READ),
                Grant("group", app_id, ("DESCRIBE",)),  # the request lag it sheds load on
                readers)
    if role == "operator":
        # Reads everything to diagnose; changes flags and canaries, asks, and redrives dead
        # letters to the topic they came from. Creates nothing and grants nothing.
        return (*_topics(READ, *ALL_TOPICS),
                *_topics(WRITE, *REQUEST_TOPICS, *COMMAND_TOPICS, RESULTS, EVENTS,
                         FLAGS),
                Grant("topic", f"{app_id}-", READ, prefixed=True),
                Grant("group", "*", READ), readers)
    if role == "analyst":
        # Read-only audit: the work and its record, the tables' changelogs (replay
        # --rebuild). No flags, no dead letters, no producing.
        return (*_topics(READ, *REQUEST_TOPICS, *COMMAND_TOPICS, RESULTS, ANSWERS,
                         EVENTS),
                Grant("topic", f"{app_id}-", READ, prefixed=True), readers)
    return ()


# Redis: ACL users with key patterns (Redis 7 selectors). Commands: everything but the
# dangerous and admin ones (no FLUSHALL, CONFIG, ACL, KEYS, DEBUG ...).
COMMANDS: Final = "+@all -@dangerous -@admin"
REDIS_KEYS: Final[dict[Role, tuple[str, ...]]] = {
    "coordinator": ("clawstream:arrivals:*", "clawstream:budget:*", "clawstream:recall:*",
                    "clawstream:canary:*"),
    "tools": ("tc:*", "emb:*", "ledger:*", "clawstream:recall:*", "tool:*"),
    "inference": ("pc:*", "emb:*", "clawstream:bucket:*", "clawstream:admissions:*",
                  "clawstream:budget:*"),
    "gateway": ("clawstream:gw:*",),
    "operator": ("clawstream:gw:*",),
    "analyst": (),
}
"""``tool:*`` is the tools' own namespace for what they change outside (a tool gets the
worker's client through ToolResources): the ledger and caches stay out of their reach."""


def redis_rules(role: Role) -> str:
    """The ``ACL SETUSER`` rules of ``role`` (without its password and on/off)."""
    if role == "admin":
        return "~* &* +@all"
    if role == "worker":
        patterns = tuple(dict.fromkeys(p for part in WORKER_PARTS for p in REDIS_KEYS[part]))
    else:
        patterns = REDIS_KEYS[role]
    keys = " ".join(f"~{p}" for p in patterns)
    if role == "operator":
        keys += " %R~*"  # reads anything to diagnose (status, cost), writes only API keys
    if role == "analyst":
        return "resetkeys -@all +ping"
    return f"resetkeys {keys} {COMMANDS}"
