"""The schema registry's Confluent-compatible API: registering our schemas (``up``,
``clawstream schemas register``) and the ids every process writes with.

Subjects are named after the record (``clawstream.AgentAnswer``: Confluent's
RecordNameStrategy), not the topic, because a topic carries several kinds of record (the
results topic: step results, wake-ups, cancels). A reader needs only the id in the message,
whatever the subject. The registry checks each new version of a subject against the last
under its compatibility level (BACKWARD, set by ``up``): a change that would stop a reader
of the new schema from reading the records already written is refused with the
registry's reason, before anything writes with it.

Processes never register: they look their schemas' ids up (``use_registry``), so a release
whose schemas were not registered writes single-object records (readable by every reader
here) and says so in its log, instead of registering whatever it carries.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import httpx

from clawstream.config import Settings
from clawstream.schemas.codec import CURRENT, Schema, use_registry

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
RETRY_AFTER_S = 30.0
"""A schema whose id could not be had is asked for again after this long (meanwhile its
records go out single-object)."""


class RegistryError(RuntimeError):
    """The registry refused or could not answer; the message says which and why."""


class IncompatibleSchema(RegistryError):
    """A new version of a subject breaks its compatibility level (HTTP 409)."""


class RegistryClient:
    """The few calls of the Confluent API we need (``url`` ends in ``/apis/ccompat/v7`` for
    Apicurio; Confluent's own registry serves them at its root)."""

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout_s,
                                  headers={"Content-Type": CONTENT_TYPE})

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None
              ) -> httpx.Response:
        try:
            return self._http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise RegistryError(f"schema registry at {self.url}: {type(exc).__name__}: "
                                f"{exc}") from exc

    @staticmethod
    def _reason(response: httpx.Response) -> str:
        try:
            return str(response.json().get("message") or response.text)
        except ValueError:
            return response.text

    def register(self, subject: str, schema: Schema) -> int:
        """Register ``schema`` under ``subject`` (a no-op returning the same id when it is
        already there); raises :class:`IncompatibleSchema` with the registry's reason."""
        response = self._call("POST", f"/subjects/{subject}/versions",
                              {"schema": json.dumps(schema), "schemaType": "AVRO"})
        if response.status_code == 409:
            raise IncompatibleSchema(f"{subject}: the registry refuses this version as "
                                     f"incompatible: {self._reason(response)}")
        if response.status_code != 200:
            raise RegistryError(f"{subject}: registering failed with HTTP "
                                f"{response.status_code}: {self._reason(response)}")
        return int(response.json()["id"])

    def lookup(self, subject: str, schema: Schema) -> int | None:
        """The id of ``schema`` if it is registered under ``subject``, else None."""
        response = self._call("POST", f"/subjects/{subject}",
                              {"schema": json.dumps(schema), "schemaType": "AVRO"})
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise RegistryError(f"{subject}: lookup failed with HTTP {response.status_code}: "
                                f"{self._reason(response)}")
        return int(response.json()["id"])

    def schema(self, schema_id: int) -> Schema:
        """The schema registered under ``schema_id``."""
        response = self._call("GET", f"/schemas/ids/{schema_id}")
        if response.status_code != 200:
            raise RegistryError(f"schema id {schema_id}: HTTP {response.status_code}: "
                                f"{self._reason(response)}")
        parsed = json.loads(response.json()["schema"])
        if not isinstance(parsed, dict):
            raise RegistryError(f"schema id {schema_id} is not a record schema")
        return parsed

    def set_compatibility(self, level: str) -> None:
        """The registry-wide default level (subjects without their own)."""
        response = self._call("PUT", "/config", {"compatibility": level})
        if response.status_code != 200:
            raise RegistryError(f"setting compatibility {level} failed with HTTP "
                                f"{response.status_code}: {self._reason(response)}")


def register_all(client: RegistryClient) -> dict[str, int]:
    """Register every current schema under its record's name; the ids by schema name.
    Stops at the first refusal (nothing after it is registered)."""
    return {name: client.register(name, CURRENT[name]) for name in CURRENT}


class RegistryIds:
    """The codec's :class:`~clawstream.schemas.codec.SchemaIds` over a registry: ids looked
    up once and kept. A schema the registry has no id for, or every schema while the
    registry cannot be reached, is asked again after :data:`RETRY_AFTER_S` (its records are
    written single-object meanwhile), so an outage costs one failed call, not one per
    record."""

    def __init__(self, client: RegistryClient) -> None:
        self._client = client
        self._ids: dict[str, int] = {}
        self._missed: dict[str, float] = {}
        self._away_until = 0.0
        self._lock = threading.Lock()

    def id_of(self, name: str, schema: Schema) -> int | None:
        known = self._ids.get(name)
        if known is not None:
            return known
        with self._lock:
            now = time.monotonic()
            if now < self._away_until or now < self._missed.get(name, 0.0):
                return None
            try:
                found = self._client.lookup(name, schema)
            except RegistryError as exc:
                log.warning("%s; writing single-object for %.0f s", exc, RETRY_AFTER_S)
                self._away_until = now + RETRY_AFTER_S
                return None
            if found is None:
                log.error("%s is not registered in the schema registry at %s (run "
                          "`clawstream schemas register`); writing it single-object for "
                          "now", name, self._client.url)
                self._missed[name] = now + RETRY_AFTER_S
                return None
            self._ids[name] = found
            return found

    def schema_of(self, schema_id: int) -> Schema:
        return self._client.schema(schema_id)


def bind(url: str | None, learn_now: bool = True) -> None:
    """Write this process's records in the Confluent format with ``url``'s ids (None: no
    registry, single-object); ``learn_now``: see :func:`use_registry`."""
    use_registry(RegistryIds(RegistryClient(url)) if url else None, learn_now)


def bind_settings(settings: Settings, learn_now: bool = True) -> None:
    """:func:`bind` to the settings' registry, when it is on: every process that writes
    records calls it at its start (workers, gateway, CLI)."""
    bind(settings.schema_registry_url if settings.schema_registry_enabled else None,
         learn_now)
