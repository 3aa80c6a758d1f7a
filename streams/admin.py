"""Create the catalogue's topics idempotently at start."""

from __future__ import annotations

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from streams.topics import CATALOGUE, TopicSpec


def ensure_topics(bootstrap: str, partitions: int, specs: tuple[TopicSpec, ...] = CATALOGUE,
                  timeout_s: float = 30.0) -> list[str]:
    """Create missing topics; returns the names created. Existing topics are left alone."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    wanted = [
        NewTopic(s.name, num_partitions=s.partitions(partitions), replication_factor=1,
                 config=s.config())
        for s in specs
        if s.name not in existing
    ]
    if not wanted:
        return []
    created = []
    for name, future in admin.create_topics(wanted, operation_timeout=timeout_s).items():
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    return created
