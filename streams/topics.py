"""The topic catalogue: every topic's name, partitions, retention and compaction, once.

Conversation-scoped topics share the key (conversation_id) and the partition count, so one
worker owns a conversation at a time and its state never leaves RocksDB + changelog.

Retention is an audit decision. Answers and events are the audit trail (every decision,
step, its tokens and cost, and the answer), so they are kept forever by default; the work
queues (requests, step commands and results) only need to outlive a redelivery or a replay
after an incident, 7 days; dead letters 90 days, for a redrive. Each is a default:
``CLAWSTREAM_TOPIC_RETENTION_MS`` overrides any topic's (by name, -1 = forever), and
``up`` applies the settings to topics that already exist.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Final

from clawstream.schemas.records import Lane

DAY_MS: Final = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    conversation_scoped: bool = True
    retention_ms: int = 7 * DAY_MS
    compacted: bool = False
    fixed_partitions: int | None = None
    extra_config: dict[str, str] = field(default_factory=dict)

    def partitions(self, conversation_partitions: int) -> int:
        if self.fixed_partitions is not None:
            return self.fixed_partitions
        return conversation_partitions

    def config(self) -> dict[str, str]:
        conf = {
            "cleanup.policy": "compact" if self.compacted else "delete",
            "retention.ms": str(self.retention_ms),
        }
        conf.update(self.extra_config)
        return conf


REQUESTS_INTERACTIVE: Final = TopicSpec("agent.requests.interactive")
REQUESTS_BATCH: Final = TopicSpec("agent.requests.batch")
INFERENCE_REQUESTS: Final = TopicSpec("inference.requests")
# Batch-lane model steps travel apart, so the dispatcher can stop fetching them (pause) while
# interactive steps keep flowing: a shared topic would queue interactive behind a flood.
INFERENCE_REQUESTS_BATCH: Final = TopicSpec("inference.requests.batch")
TOOL_REQUESTS: Final = TopicSpec("tool.requests")
RESULTS: Final = TopicSpec("agent.results")
FOREVER: Final = -1
ANSWERS: Final = TopicSpec("agent.answers", retention_ms=FOREVER)
EVENTS: Final = TopicSpec("agent.events", retention_ms=FOREVER)
DELTAS: Final = TopicSpec("agent.deltas", retention_ms=DAY_MS)
"""Model-step deltas (``StepDelta``) for streaming clients: a transport, not the record
(the answer is), so a day is kept."""
DLQ: Final = TopicSpec("agent.dlq", conversation_scoped=False, retention_ms=90 * DAY_MS,
                       fixed_partitions=1)
CONTROL_FLAGS: Final = TopicSpec("control.flags", conversation_scoped=False, compacted=True,
                                 retention_ms=FOREVER, fixed_partitions=1)

CATALOGUE: Final = (
    REQUESTS_INTERACTIVE,
    REQUESTS_BATCH,
    INFERENCE_REQUESTS,
    INFERENCE_REQUESTS_BATCH,
    TOOL_REQUESTS,
    RESULTS,
    ANSWERS,
    EVENTS,
    DELTAS,
    DLQ,
    CONTROL_FLAGS,
)

# The worker's RocksDB tables. Faust names a table's changelog "<app id>-<table>-changelog".
CONVERSATIONS_TABLE: Final = "conversations"
DEDUP_TABLE: Final = "request_dedup"


def changelog_topics(app_id: str) -> tuple[TopicSpec, ...]:
    """Created with the others, before any worker starts. Left to Faust, two fresh workers
    race to create them, and one whose metadata still lacks a changelog fails every write
    to that table (PartitionsMismatch: "the changelog topic has 0 partitions"); seen in
    ``bench recovery``, where it dead-lettered every request of a run."""
    return tuple(TopicSpec(changelog_topic(app_id, table), compacted=True,
                           retention_ms=FOREVER)
                 for table in (CONVERSATIONS_TABLE, DEDUP_TABLE))


def changelog_topic(app_id: str, table: str) -> str:
    return f"{app_id}-{table}-changelog"


def with_retention(specs: tuple[TopicSpec, ...], overrides: Mapping[str, int]
                   ) -> tuple[TopicSpec, ...]:
    """``specs`` with the retention ``overrides`` (topic name -> ms) applied; a name that is
    not among them is a typo in the settings, not something to ignore."""
    unknown = set(overrides) - {s.name for s in specs}
    if unknown:
        raise ValueError(f"retention set for unknown topic(s) {sorted(unknown)}; topics: "
                         f"{sorted(s.name for s in specs)}")
    return tuple(replace(s, retention_ms=overrides[s.name]) if s.name in overrides else s
                 for s in specs)


LANE_TOPICS: Final[dict[Lane, TopicSpec]] = {"interactive": REQUESTS_INTERACTIVE,
                                              "batch": REQUESTS_BATCH}


def parse_lane(lane: str) -> Lane:
    """A lane named by a caller; an unknown lane is a caller error, not a default."""
    if lane == "interactive":
        return "interactive"
    if lane == "batch":
        return "batch"
    raise ValueError(f"unknown lane {lane!r}; expected one of {sorted(LANE_TOPICS)}")


def request_topic(lane: str) -> TopicSpec:
    """The request topic of a lane; an unknown lane is a caller error, not a default."""
    return LANE_TOPICS[parse_lane(lane)]


INFERENCE_LANE_TOPICS: Final = {"interactive": INFERENCE_REQUESTS,
                                 "batch": INFERENCE_REQUESTS_BATCH}


def inference_topic(lane: str) -> TopicSpec:
    """The model-step topic of a lane (interactive steps keep the historical name)."""
    return INFERENCE_LANE_TOPICS.get(lane, INFERENCE_REQUESTS)


def delegation_topic(lane: str) -> TopicSpec:
    """Where a sub-agent's request goes: the coordinator's own request stream, whatever the
    lane (the request keeps its lane, so its steps run in it). Not the batch request topic:
    its reader waits for a free batch slot before it takes the next record, and a slot
    frees when a running batch request ends; parents holding every slot while their
    children queue behind a new batch request would wait for each other until their
    deadlines. A child is part of an admitted request, not a new one."""
    parse_lane(lane)
    return REQUESTS_INTERACTIVE
