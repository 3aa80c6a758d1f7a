"""Avro on the wire: the Confluent format with a schema registry, single-object without.

With a registry (:func:`use_registry`, bound by each process from its settings: see
``clawstream.streams.schema_registry``) a message is byte 0, the writer schema's 4-byte
big-endian registry id, and the Avro body: what confluent-kafka's ``AvroDeserializer``, the
Java and Go deserializers and every Kafka UI read. Without one, or while the registry cannot
tell a schema's id, a message is single-object encoded, described next. Every reader here
reads both, so topics written before the registry (or during its outage) stay readable.

Single-object encoding: every message is ``C3 01`` + the 8-byte little-endian CRC-64-AVRO
fingerprint of the writer schema's parsing canonical form + the Avro body, exactly as the
Avro specification's "Single-object encoding" says, so any reader written from the spec
(Java's ``BinaryMessageDecoder``, Rust, Go, JS) reads our records and we read theirs. The
fingerprint index is built from the ``.avsc`` files in ``schemas/avro`` (current) and
``schemas/history`` (every earlier version), so any consumer holding this folder can decode
any message ever written, and reads it through the *current* schema (Avro schema
resolution fills new fields' defaults).

Records written before issue 11 carry the fingerprint byte-reversed (the hex of fastavro's
fingerprint, already in wire order, was read as a number and packed little-endian again).
The reader accepts that order too, so topics written back then stay readable; nothing
writes it any more.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Protocol, cast, overload

import fastavro
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form
from fastavro.schema import load_schema as _fastavro_load

from clawstream.schemas.names import EVENT_SCHEMAS
from clawstream.schemas.records import (
    AgentAnswer,
    AgentEvent,
    AgentRequest,
    Cancel,
    ControlFlag,
    DeadLetter,
    StepCommand,
    StepResult,
    Wakeup,
    WireRecord,
)

MAGIC = b"\xc3\x01"
HEADER_LEN = len(MAGIC) + 8
CONFLUENT_MAGIC = 0
CONFLUENT_HEADER_LEN = 5
AVRO_DIR = Path(__file__).parent / "avro"
HISTORY_DIR = Path(__file__).parent / "history"

Schema = dict[str, Any]


class DecodeError(ValueError):
    """A message that is not a clawstream event: wrong magic, unknown schema or bad body."""


def load_schema(name: str, directory: Path = AVRO_DIR) -> Schema:
    """Load ``name`` from ``directory``, resolving references to sibling ``.avsc`` files."""
    schema = _fastavro_load(str(directory / f"{name}.avsc"), _write_hint=False)
    if not isinstance(schema, dict):
        raise TypeError(f"{name} is not a named record schema")
    return schema


def fingerprint_of(schema: Schema) -> bytes:
    """The 8 bytes that identify ``schema`` on the wire: the little-endian CRC-64-AVRO of
    its parsing canonical form. fastavro returns the hex of exactly those bytes, in wire
    order (for ``"int"``: ``8f5c393f1ad57572``, the spec's 0x7275D51A3F395C8F)."""
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


def legacy_fingerprint_of(schema: Schema) -> bytes:
    """The byte-reversed fingerprint clawstream wrote before issue 11; read, never written."""
    return fingerprint_of(schema)[::-1]


@dataclass(frozen=True)
class _Entry:
    name: str
    writer: Schema


@lru_cache(maxsize=1)
def _current() -> dict[str, Schema]:
    return {name: load_schema(name) for name in EVENT_SCHEMAS}


def _writers() -> list[_Entry]:
    """Every schema a record may have been written with: current first, then history."""
    entries = [_Entry(n, s) for n, s in _current().items()]
    if HISTORY_DIR.is_dir():
        for version_dir in sorted(p for p in HISTORY_DIR.iterdir() if p.is_dir()):
            entries += [_Entry(name, load_schema(name, version_dir)) for name in EVENT_SCHEMAS
                        if (version_dir / f"{name}.avsc").exists()]
    return entries


@lru_cache(maxsize=1)
def _index() -> dict[bytes, _Entry]:
    """Fingerprint -> writer schema, in the spec's byte order and the legacy one."""
    index: dict[bytes, _Entry] = {}
    for entry in _writers():
        index.setdefault(fingerprint_of(entry.writer), entry)
    for entry in _writers():
        legacy = legacy_fingerprint_of(entry.writer)
        taken = index.get(legacy)
        if taken is not None and taken.writer != entry.writer:
            raise RuntimeError(f"legacy fingerprint of {entry.name} collides with "
                               f"{taken.name}: the two byte orders cannot both be read")
        index.setdefault(legacy, entry)
    return index


class _Current:
    """Mapping-like access to the current schemas, loaded once on first use."""

    def __getitem__(self, name: str) -> Schema:
        return _current()[name]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(_current())


CURRENT = _Current()


class SchemaIds(Protocol):
    """The registry's side of the Confluent format (``streams.schema_registry`` holds one)."""

    def id_of(self, name: str, schema: Schema) -> int | None:
        """The id of a current schema; None when it cannot be had now (not registered, the
        registry away): the record is then written single-object."""

    def schema_of(self, schema_id: int) -> Schema:
        """The writer schema of an id this process does not know (another release's);
        raises when the registry cannot say."""


@dataclass
class _Binding:
    ids: SchemaIds | None = None
    writers: dict[int, _Entry] = field(default_factory=dict)
    """Registry id -> writer schema, for every id this process has met."""


_registry = _Binding()


def registry_in_use() -> SchemaIds | None:
    """What :func:`use_registry` bound this process to (None: single-object)."""
    return _registry.ids


def use_registry(ids: SchemaIds | None, learn_now: bool = True) -> None:
    """Write the Confluent format from now on, with ``ids`` (None: single-object again).
    With ``learn_now`` the current schemas' ids are asked for at once, so reading our own
    records never waits on the registry; without, each is asked for when first written (a
    command that starts the registry itself binds before it is up)."""
    _registry.ids = ids
    _registry.writers = {}
    if ids is None or not learn_now:
        return
    for name, schema in _current().items():
        schema_id = ids.id_of(name, schema)
        if schema_id is not None:
            _registry.writers[schema_id] = _Entry(name, schema)


@lru_cache(maxsize=16)
def _header(name: str) -> bytes:
    return MAGIC + fingerprint_of(_current()[name])


def _prefix(name: str) -> bytes:
    ids = _registry.ids
    if ids is not None:
        schema_id = ids.id_of(name, _current()[name])
        if schema_id is not None:
            _registry.writers.setdefault(schema_id, _Entry(name, _current()[name]))
            return bytes([CONFLUENT_MAGIC]) + schema_id.to_bytes(4, "big")
    return _header(name)


def encode(name: str, record: Mapping[str, Any]) -> bytes:
    """Encode ``record`` with the current schema ``name``; raises on a record that does not fit."""
    buf = io.BytesIO()
    buf.write(_prefix(name))
    fastavro.schemaless_writer(buf, _current()[name], record, strict_allow_default=True)
    return buf.getvalue()


def _registered(schema_id: int) -> _Entry:
    entry = _registry.writers.get(schema_id)
    if entry is not None:
        return entry
    ids = _registry.ids
    if ids is None:
        raise DecodeError(f"written with registry schema id {schema_id}, and no schema "
                          "registry is configured to look it up")
    writer = ids.schema_of(schema_id)
    name = str(writer.get("name", ""))
    if name not in _current():
        raise DecodeError(f"registry schema id {schema_id} is {name or 'not a record'}, "
                          "not a clawstream event")
    entry = _registry.writers[schema_id] = _Entry(name, cast(Schema, parse_schema(writer)))
    return entry


def _writer_of(data: bytes | None) -> tuple[_Entry, int]:
    """The writer schema of a message and where its body starts."""
    if data is not None and len(data) >= CONFLUENT_HEADER_LEN and data[0] == CONFLUENT_MAGIC:
        return _registered(int.from_bytes(data[1:CONFLUENT_HEADER_LEN], "big")), \
            CONFLUENT_HEADER_LEN
    if data is None or len(data) < HEADER_LEN or data[:2] != MAGIC:
        raise DecodeError("neither the Confluent format (byte 0 + schema id) nor Avro "
                          "single-object encoding (C3 01 header)")
    entry = _index().get(bytes(data[2:HEADER_LEN]))
    if entry is None:
        raise DecodeError(f"unknown schema fingerprint {bytes(data[2:HEADER_LEN]).hex()}")
    return entry, HEADER_LEN


def decode(data: bytes | None) -> tuple[str, WireRecord]:
    """Decode any clawstream event: returns (schema name, record as the current schema sees it)."""
    entry, start = _writer_of(data)
    assert data is not None
    try:
        record = fastavro.schemaless_reader(
            io.BytesIO(data[start:]), entry.writer, _current()[entry.name]
        )
    except Exception as exc:  # fastavro raises several types for a corrupt body
        raise DecodeError(f"corrupt {entry.name} body: {exc}") from exc
    if not isinstance(record, dict):
        raise DecodeError(f"{entry.name} body is not a record")
    return entry.name, cast(WireRecord, record)


@overload
def decode_as(name: Literal["clawstream.AgentRequest"], data: bytes | None) -> AgentRequest: ...
@overload
def decode_as(name: Literal["clawstream.StepCommand"], data: bytes | None) -> StepCommand: ...
@overload
def decode_as(name: Literal["clawstream.StepResult"], data: bytes | None) -> StepResult: ...
@overload
def decode_as(name: Literal["clawstream.AgentEvent"], data: bytes | None) -> AgentEvent: ...
@overload
def decode_as(name: Literal["clawstream.AgentAnswer"], data: bytes | None) -> AgentAnswer: ...
@overload
def decode_as(name: Literal["clawstream.DeadLetter"], data: bytes | None) -> DeadLetter: ...
@overload
def decode_as(name: Literal["clawstream.ControlFlag"], data: bytes | None) -> ControlFlag: ...
@overload
def decode_as(name: Literal["clawstream.Wakeup"], data: bytes | None) -> Wakeup: ...
@overload
def decode_as(name: Literal["clawstream.Cancel"], data: bytes | None) -> Cancel: ...
def decode_as(name: str, data: bytes | None) -> WireRecord:
    """Decode and insist on one schema: a request topic carrying an answer is an error."""
    got, record = decode(data)
    if got != name:
        raise DecodeError(f"expected {name}, got {got}")
    return record
