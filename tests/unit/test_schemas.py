"""Codec and schema evolution: every earlier version stays readable by the current one."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import fastavro
import pytest
from fastavro.schema import to_parsing_canonical_form
from fastavro.utils import generate_many
from hypothesis import given
from hypothesis import strategies as st

from clawstream.schemas import (
    CURRENT,
    DecodeError,
    decode,
    decode_as,
    encode,
    fingerprint_of,
    load_schema,
)
from clawstream.schemas.codec import HEADER_LEN, HISTORY_DIR, MAGIC, legacy_fingerprint_of
from clawstream.schemas.names import AGENT_ANSWER, AGENT_REQUEST, EVENT_SCHEMAS

VERSIONS = sorted(p for p in HISTORY_DIR.iterdir() if p.is_dir())


# Every event each earlier version had (events added later have no earlier version).
PAST_EVENTS = [(version, name) for version in VERSIONS for name in EVENT_SCHEMAS
               if (version / f"{name}.avsc").is_file()]


@pytest.mark.parametrize(("version", "name"), PAST_EVENTS,
                         ids=[f"{v.name}-{n}" for v, n in PAST_EVENTS])
def test_current_reads_every_previous_version(version: Path, name: str) -> None:
    old = load_schema(name, version)
    for record in generate_many(old, 20):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, old, record)
        buf.seek(0)
        fastavro.schemaless_reader(buf, old, CURRENT[name])  # raises if incompatible


def test_an_incompatible_change_is_caught(tmp_path: Path) -> None:
    """The check above must be able to fail: a new field without a default breaks readers."""
    broken = json.loads((Path(__file__).parents[2] / "schemas/avro/clawstream.Usage.avsc")
                        .read_text())
    broken["fields"].append({"name": "new_required", "type": "string"})
    old = load_schema("clawstream.Usage", HISTORY_DIR / "v1")
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, old, next(iter(generate_many(old, 1))))
    buf.seek(0)
    with pytest.raises(fastavro.read.SchemaResolutionError):
        fastavro.schemaless_reader(buf, old, fastavro.parse_schema(broken))


def _crc64_avro(data: bytes) -> int:
    """The Avro specification's reference CRC-64-AVRO ("Schema Fingerprints"), transcribed
    from its Java listing: written here, not taken from fastavro, so the codec's fingerprints
    are checked against an independent computation."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


def test_fingerprint_is_the_spec_value_in_wire_order() -> None:
    # Avro spec: the fingerprint of "int" is 8247732601305521295 (0x7275D51A3F395C8F), written
    # little-endian after C3 01: 8F 5C 39 3F 1A D5 75 72.
    assert _crc64_avro(b'"int"') == 8247732601305521295
    spec = struct.pack("<Q", 8247732601305521295)
    assert spec == bytes.fromhex("8f5c393f1ad57572")
    assert fingerprint_of("int") == spec  # type: ignore[arg-type]


@pytest.mark.parametrize("name", EVENT_SCHEMAS)
def test_every_header_carries_the_reference_crc64_of_the_canonical_form(name: str) -> None:
    canonical = to_parsing_canonical_form(CURRENT[name]).encode()
    data = encode(name, next(iter(generate_many(CURRENT[name], 1))))
    assert data[2:HEADER_LEN] == struct.pack("<Q", _crc64_avro(canonical))


@pytest.mark.parametrize("name", EVENT_SCHEMAS)
def test_records_written_with_the_old_byte_order_stay_readable(name: str) -> None:
    for record in generate_many(CURRENT[name], 3):
        data = encode(name, record)
        old = MAGIC + data[2:HEADER_LEN][::-1] + data[HEADER_LEN:]
        assert decode(old) == decode(data) == (name, decode(data)[1])


@pytest.mark.parametrize(("version", "name"), PAST_EVENTS,
                         ids=[f"{v.name}-{n}" for v, n in PAST_EVENTS])
def test_old_versions_in_the_old_byte_order_stay_readable(version: Path, name: str) -> None:
    old = load_schema(name, version)
    record = next(iter(generate_many(old, 1)))
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, old, record)
    got, _ = decode(MAGIC + legacy_fingerprint_of(old) + buf.getvalue())
    assert got == name


@pytest.mark.parametrize("name", EVENT_SCHEMAS)
def test_every_event_round_trips_with_a_header(name: str) -> None:
    for record in generate_many(CURRENT[name], 5):
        data = encode(name, record)
        assert data[:2] == MAGIC
        got_name, got = decode(data)
        assert got_name == name
        assert encode(name, got) == data


@given(st.binary(max_size=64))
def test_garbage_never_decodes_silently(data: bytes) -> None:
    try:
        decode(data)
    except DecodeError:
        return
    raise AssertionError("random bytes decoded as an event")


def test_decode_as_refuses_the_wrong_event() -> None:
    record = next(iter(generate_many(CURRENT[AGENT_REQUEST], 1)))
    with pytest.raises(DecodeError, match="expected"):
        decode_as(AGENT_ANSWER, encode(AGENT_REQUEST, record))
