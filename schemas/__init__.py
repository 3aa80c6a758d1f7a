"""Avro schemas of every clawstream event, and the codec that reads and writes them."""

from clawstream.schemas.codec import (
    CURRENT,
    DecodeError,
    decode,
    decode_as,
    encode,
    fingerprint_of,
    load_schema,
)

__all__ = [
    "CURRENT",
    "DecodeError",
    "decode",
    "decode_as",
    "encode",
    "fingerprint_of",
    "load_schema",
]
