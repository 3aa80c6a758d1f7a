"""The TypedDicts in ``schemas/records.py`` say exactly what the ``.avsc`` files say: the
same fields, in the same order, with the matching Python type for each Avro type."""

from __future__ import annotations

import typing
from typing import Any, Literal, Union, get_args, get_origin

import pytest
from fastavro.utils import generate_many

from clawstream.schemas import CURRENT, encode
from clawstream.schemas import records as rec
from clawstream.schemas.names import EVENT_SCHEMAS

PRIMITIVES = {"string": str, "long": int, "int": int, "double": float, "float": float,
              "boolean": bool, "bytes": bytes, "null": type(None)}


def _named(schema: Any, found: dict[str, Any]) -> None:
    """Collect every named record (nested ones too) of a parsed schema."""
    if isinstance(schema, list):
        for branch in schema:
            _named(branch, found)
    elif isinstance(schema, dict):
        if schema.get("type") == "record":
            found[schema["name"]] = schema
            for f in schema["fields"]:
                _named(f["type"], found)
        elif schema.get("type") == "array":
            _named(schema["items"], found)
        elif schema.get("type") == "map":
            _named(schema["values"], found)


NAMED: dict[str, Any] = {}
for _name in EVENT_SCHEMAS:
    _named(CURRENT[_name], NAMED)


def expected(avro: Any) -> Any:
    """The Python type an Avro type maps to, in the form typing.get_type_hints gives."""
    if isinstance(avro, str):
        if avro in PRIMITIVES:
            return PRIMITIVES[avro]
        return rec.RECORD_TYPES[avro]
    if isinstance(avro, list):
        return Union[tuple(expected(b) for b in avro)]  # noqa: UP007
    kind = avro["type"]
    if kind == "record":
        return rec.RECORD_TYPES[avro["name"]]
    if kind == "enum":
        return Literal[tuple(avro["symbols"])]
    if kind == "array":
        return list[expected(avro["items"])]  # type: ignore[misc]
    if kind == "map":
        return dict[str, expected(avro["values"])]  # type: ignore[misc]
    return expected(kind)


def _normal(tp: Any) -> Any:
    """Optional order and Literal aliases compared as sets/values."""
    if get_origin(tp) in (Union, typing.Union) or type(tp).__name__ == "UnionType":
        return frozenset(_normal(a) for a in get_args(tp))
    if get_origin(tp) is Literal:
        return ("literal", frozenset(get_args(tp)))
    if get_origin(tp) in (list, dict):
        return (get_origin(tp), tuple(_normal(a) for a in get_args(tp)))
    return tp


def test_every_named_record_has_a_type() -> None:
    assert set(NAMED) == set(rec.RECORD_TYPES)


@pytest.mark.parametrize("name", sorted(NAMED))
def test_type_matches_schema(name: str) -> None:
    hints = typing.get_type_hints(rec.RECORD_TYPES[name])
    fields = NAMED[name]["fields"]
    assert list(hints) == [f["name"] for f in fields]
    for f in fields:
        assert _normal(hints[f["name"]]) == _normal(expected(f["type"])), f["name"]


@pytest.mark.parametrize("name", EVENT_SCHEMAS)
def test_generated_records_fit_the_types(name: str) -> None:
    """Schema-generated records have exactly the keys their TypedDict declares."""
    keys = set(typing.get_type_hints(rec.RECORD_TYPES[name]))
    for record in generate_many(CURRENT[name], 5):
        assert set(record) == keys
        encode(name, record)


def test_empty_usage_is_a_usage() -> None:
    assert set(rec.empty_usage()) == set(typing.get_type_hints(rec.Usage))
