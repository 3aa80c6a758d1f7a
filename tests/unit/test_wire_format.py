"""The Confluent wire format (byte 0, the schema's 4-byte big-endian registry id, the Avro
body) when a registry is bound, single-object otherwise, and both always readable."""

from __future__ import annotations

import io
from typing import Any

import fastavro
import pytest

from clawstream.schemas import codec
from clawstream.schemas.codec import CURRENT, DecodeError, Schema, decode, encode, use_registry
from clawstream.schemas.names import CONTROL_FLAG, WAKEUP
from clawstream.streams import schema_registry
from clawstream.streams.schema_registry import RegistryError, RegistryIds

FLAG = {"name": "degrade", "value": "on", "updated_at_ms": 5, "updated_by": "cli"}


class Ids:
    """A registry's answers: an id per current schema, and schemas by id."""

    def __init__(self, ids: dict[str, int], extra: dict[int, Schema] | None = None) -> None:
        self.ids = ids
        self.extra = extra or {}
        self.fetched: list[int] = []

    def id_of(self, name: str, schema: Schema) -> int | None:
        return self.ids.get(name)

    def schema_of(self, schema_id: int) -> Schema:
        self.fetched.append(schema_id)
        if schema_id not in self.extra:
            raise RegistryError(f"no schema {schema_id}")
        return self.extra[schema_id]


def test_a_bound_process_writes_byte_zero_and_the_big_endian_id() -> None:
    use_registry(Ids({CONTROL_FLAG: 258}))
    data = encode(CONTROL_FLAG, FLAG)
    assert data[:5] == b"\x00\x00\x00\x01\x02"
    # The body is plain Avro binary of the registered schema, as any Confluent reader takes it.
    assert fastavro.schemaless_reader(io.BytesIO(data[5:]), CURRENT[CONTROL_FLAG],
                                      None) == FLAG
    assert decode(data) == (CONTROL_FLAG, FLAG)


def test_a_schema_without_an_id_is_written_single_object_and_both_read() -> None:
    use_registry(Ids({}))  # not registered, or the registry away
    single = encode(CONTROL_FLAG, FLAG)
    assert single[:2] == b"\xc3\x01"
    use_registry(Ids({CONTROL_FLAG: 3}))
    assert decode(single) == decode(encode(CONTROL_FLAG, FLAG)) == (CONTROL_FLAG, FLAG)


def test_an_id_of_another_release_is_fetched_once_and_read_through_the_current_schema(
) -> None:
    older: dict[str, Any] = {k: v for k, v in CURRENT[WAKEUP].items()}
    older["fields"] = [f for f in older["fields"] if f["name"] != "worker"]
    record = {"conversation_id": "c", "due_ms": 1, "sent_at_ms": 2}
    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(older), record)
    data = b"\x00" + (77).to_bytes(4, "big") + body.getvalue()
    ids = Ids({}, {77: older})
    use_registry(ids)
    assert decode(data) == (WAKEUP, {**record, "worker": ""})  # the new field's default
    assert decode(data)[0] == WAKEUP and ids.fetched == [77]


def test_an_id_that_is_not_ours_or_with_no_registry_is_a_decode_error() -> None:
    data = b"\x00\x00\x00\x00\x09" + b"\x02"
    with pytest.raises(DecodeError, match="no schema registry"):
        decode(data)
    use_registry(Ids({}, {9: {"type": "record", "name": "other.Thing", "fields": []}}))
    with pytest.raises(DecodeError, match="not a clawstream event"):
        decode(data)


class Client:
    def __init__(self, answers: list[int | Exception | None]) -> None:
        self.answers = answers
        self.url = "http://registry"
        self.asked = 0

    def lookup(self, subject: str, schema: Schema) -> int | None:
        self.asked += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_ids_are_looked_up_once_and_a_miss_is_asked_again_only_later(
        monkeypatch: pytest.MonkeyPatch) -> None:
    client = Client([RegistryError("down"), None, 12, 13])
    ids = RegistryIds(client)  # type: ignore[arg-type]
    clock = [100.0]
    monkeypatch.setattr(schema_registry.time, "monotonic", lambda: clock[0])
    assert ids.id_of(WAKEUP, CURRENT[WAKEUP]) is None
    # The registry is away: no schema is asked for until the retry time.
    assert ids.id_of(CONTROL_FLAG, CURRENT[CONTROL_FLAG]) is None and client.asked == 1
    clock[0] += schema_registry.RETRY_AFTER_S
    assert ids.id_of(WAKEUP, CURRENT[WAKEUP]) is None  # not registered
    assert ids.id_of(CONTROL_FLAG, CURRENT[CONTROL_FLAG]) == 12  # another schema is asked
    assert ids.id_of(WAKEUP, CURRENT[WAKEUP]) is None and client.asked == 3
    clock[0] += schema_registry.RETRY_AFTER_S
    assert ids.id_of(WAKEUP, CURRENT[WAKEUP]) == 13
    assert ids.id_of(CONTROL_FLAG, CURRENT[CONTROL_FLAG]) == 12 and client.asked == 4


def test_binding_learns_the_current_ids_so_reading_our_records_never_asks() -> None:
    ids = Ids({name: i + 1 for i, name in enumerate(CURRENT)})
    use_registry(ids)
    data = encode(CONTROL_FLAG, FLAG)
    assert decode(data) == (CONTROL_FLAG, FLAG) and ids.fetched == []
    assert set(codec._registry.writers) == set(ids.ids.values())


def test_a_lazy_binding_asks_for_an_id_when_first_writing_and_reads_it_back_unasked() -> None:
    asked: list[str] = []

    class Counting(Ids):
        def id_of(self, name: str, schema: Schema) -> int | None:
            asked.append(name)
            return super().id_of(name, schema)

    ids = Counting({CONTROL_FLAG: 41})
    use_registry(ids, learn_now=False)  # a command that starts the registry itself
    assert asked == []
    data = encode(CONTROL_FLAG, FLAG)
    assert asked == [CONTROL_FLAG] and data[:5] == b"\x00\x00\x00\x00\x29"
    assert decode(data) == (CONTROL_FLAG, FLAG) and ids.fetched == []
