"""The schema registry as ``up`` runs it, on its own: ids survive a crash and a restart,
and once compatibility is BACKWARD a change old readers cannot follow is refused.

Only the registry runs here (its own state dir and port, none of the session's stack): an
id written into a record must name the same schema for as long as the record lives, so the
test kills the registry right after a registration, the moment a lazy flush would lose it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from clawstream.config import Settings
from clawstream.deploy.local import schema_registry
from clawstream.deploy.local.process import Processes

pytestmark = pytest.mark.integration

PORT = 28385 + int(os.environ.get("CLAWSTREAM_PORT_OFFSET", "0"))
V1 = {"type": "record", "name": "Reply", "namespace": "test.registry",
      "fields": [{"name": "text", "type": "string"}]}


def _with_field(schema: dict[str, Any], field: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "fields": [*schema["fields"], field]}


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Settings]:
    settings = Settings(state_dir=tmp_path / "state", schema_registry_port=PORT)
    try:
        schema_registry.start(settings)
        yield settings
    finally:
        schema_registry.stop(settings)


def _register(settings: Settings, subject: str, schema: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{settings.schema_registry_url}/subjects/{subject}/versions",
                      json={"schema": json.dumps(schema)}, timeout=10)


def _schema_of(settings: Settings, schema_id: int) -> dict[str, Any]:
    response = httpx.get(f"{settings.schema_registry_url}/schemas/ids/{schema_id}", timeout=10)
    assert response.status_code == 200, response.text
    return dict(json.loads(response.json()["schema"]))


def test_ids_survive_restarts_and_incompatible_changes_are_refused(
        registry: Settings) -> None:
    url = registry.schema_registry_url
    assert httpx.get(f"{url}/config", timeout=10).json() == {"compatibilityLevel": "BACKWARD"}

    first = _register(registry, "replies-value", V1)
    assert first.status_code == 200, first.text
    v1_id = first.json()["id"]
    # A new field without a default: new readers could not read old records.
    refused = _register(registry, "replies-value", _with_field(V1, {"name": "lang",
                                                                    "type": "string"}))
    assert refused.status_code == 409, refused.text
    v2 = _with_field(V1, {"name": "lang", "type": "string", "default": "en"})
    second = _register(registry, "replies-value", v2)
    assert second.status_code == 200, second.text
    v2_id = second.json()["id"]
    assert v2_id != v1_id

    Processes(registry.run_dir, registry.log_dir).kill(schema_registry.NAME)  # a crash
    assert schema_registry.start(registry).started
    assert _schema_of(registry, v1_id) == V1
    assert _schema_of(registry, v2_id) == v2

    assert schema_registry.stop(registry)  # a clean stop
    assert schema_registry.start(registry).started
    assert _schema_of(registry, v2_id) == v2
    # The same schema spelled otherwise is the same id (canonical hashing) ...
    again = httpx.post(f"{url}/subjects/replies-value/versions", timeout=10,
                       json={"schema": json.dumps(v2, indent=2)})
    assert again.json() == {"id": v2_id}
    # ... and compatibility is still BACKWARD after the restarts.
    assert _register(registry, "replies-value", _with_field(v2, {
        "name": "tone", "type": "string"})).status_code == 409
