"""Create the catalogue's topics and the tables' changelogs idempotently at start."""

from __future__ import annotations

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from clawstream.streams.topics import CATALOGUE, changelog_topics


def ensure_topics(bootstrap: str, partitions: int, app_id: str,
                  timeout_s: float = 30.0) -> list[str]:
    """Create the catalogue's and the worker tables' topics that are missing; returns the
    names created. Existing topics are left alone."""
    specs = CATALOGUE + changelog_topics(app_id)
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
