"""W3C Trace Context on our records: a ``traceparent`` header on every Kafka record.

Why: a request's ``trace_id`` already travels inside every record of its story; carrying it
in the standard header too lets any Kafka tool or tracing backend that speaks W3C Trace
Context (OpenTelemetry's Kafka instrumentations read ``traceparent``) follow a request
across our hops without decoding Avro. The entrance (the publisher, the gateway through it)
and every worker's sends add it.

The trace id is the request's ``trace_id`` (a uuid4 hex: 32 lowercase hex digits, exactly
W3C's form; any other value is hashed into one). The parent id names the hop that wrote
the record, derived from what the record is (its kind, step and attempt), so a record
written twice (a redelivery, a replay) carries the same header.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

HEADER = "traceparent"
Headers = list[tuple[str, str | bytes | None]]
"""Kafka record headers as confluent-kafka takes and returns them."""
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_PARSE = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")


def w3c_trace_id(trace_id: str) -> str:
    """``trace_id`` as W3C's 32 hex digits (itself when it already is one)."""
    if _TRACE_ID.fullmatch(trace_id) and trace_id != "0" * 32:
        return trace_id
    return hashlib.blake2b(trace_id.encode(), digest_size=16).hexdigest()


def traceparent(trace_id: str, hop: str) -> str:
    span = hashlib.blake2b(hop.encode(), digest_size=8).hexdigest()
    return f"00-{w3c_trace_id(trace_id)}-{span}-01"


def headers_for(schema: str, record: Mapping[str, Any]) -> Headers | None:
    """The record's ``traceparent`` header, or None for a record outside any trace."""
    trace_id = record.get("trace_id")
    if not trace_id:
        return None
    hop = "/".join(str(record.get(k) or "") for k in ("request_id", "step_id", "attempt",
                                                      "event_id"))
    return [(HEADER, traceparent(trace_id, f"{schema}/{hop}").encode())]


def parse(headers: Headers | None) -> tuple[str, str] | None:
    """(trace id, parent id) of a record's ``traceparent`` header, if it has a valid one."""
    for name, value in headers or ():
        if name == HEADER and value:
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            match = _PARSE.fullmatch(text)
            if match:
                return match.group(1), match.group(2)
    return None
