"""The workers' tables as their changelogs hold them, read without a worker: what
``clawstream replay --rebuild`` compares the rebuilt state with.

A table's changelog (compacted, kept forever) receives every write, key and value as JSON
(Faust's serializer for tables), on the partition of the event that wrote it, which for
both tables is the conversation's. So the last record of a key is the value the table
holds on whichever worker owns the partition now.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from clawstream.streams.topics import changelog_topic
from clawstream.streams.trace import plan, read_messages


def table_values(bootstrap: str, app_id: str, table: str, partition: int,
                 wanted: Callable[[str], bool]) -> dict[str, Any]:
    """The current value of every key of the table's ``partition`` that is ``wanted`` (a
    deleted key is left out)."""
    topic = changelog_topic(app_id, table)
    values: dict[str, Any] = {}
    for msg in read_messages(bootstrap, plan(bootstrap, {topic: [partition]}, since_ms=0)):
        raw_key = msg.key()
        key = json.loads(raw_key) if raw_key else None
        if not isinstance(key, str) or not wanted(key):
            continue
        value = msg.value()
        if value is None:  # a tombstone: the key was deleted
            values.pop(key, None)
        else:
            values[key] = json.loads(value)
    return values
