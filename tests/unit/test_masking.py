"""PII masking: no generated email, card, IBAN or phone number survives; ids do."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from clawstream.streams.masking import luhn_ok, mask, mask_text

WORDS = st.text(alphabet=st.sampled_from("abc xyz,.:;"), max_size=20)


def _with_luhn(body: str) -> str:
    for last in "0123456789":
        if luhn_ok(body + last):
            return body + last
    raise AssertionError("unreachable")


cards = st.text(alphabet="0123456789", min_size=15, max_size=15).map(_with_luhn)
emails = st.builds(lambda u, d: f"{u}@{d}.com",
                   st.text(alphabet="abcdefgh1234._", min_size=1, max_size=12).filter(
                       lambda s: s[0].isalnum() and s[-1].isalnum()),
                   st.text(alphabet="abcdefgh", min_size=1, max_size=10))
phones = st.builds(lambda cc, n: f"+{cc} {n}", st.integers(1, 99),
                   st.text(alphabet="0123456789", min_size=9, max_size=11))


@given(WORDS, st.one_of(cards, emails, phones), WORDS)
def test_no_generated_pii_survives(before: str, pii: str, after: str) -> None:
    masked = mask_text(f"{before} {pii} {after}")
    assert pii not in masked


def test_known_kinds_are_tagged_and_ids_are_left_alone() -> None:
    request_id = str(uuid.uuid4())
    text = (f"mail ann@example.org, card 4111 1111 1111 1111, iban GB82 WEST 1234 5698 "
            f"7654 32, call +44 20 7946 0958, request {request_id}, hex {uuid.uuid4().hex}")
    masked = mask_text(text)
    for tag in ("[email]", "[card]", "[iban]", "[phone]"):
        assert tag in masked
    assert request_id in masked and "hex " in masked
    assert mask_text("order 4111 1111 1111 1112") == "order 4111 1111 1111 1112"  # no Luhn


def test_ids_and_times_with_digit_runs_are_not_phone_numbers() -> None:
    for text in ("12345678-1234-4abc-9def-123456789012", "abc-12345678-x",
                 "2026-12-01 03:42:18", "2026-12-01T03:42:18+00:00", "topic/0/1234567"):
        assert mask_text(text) == text, text


def test_records_are_walked_and_bytes_dropped() -> None:
    record = {"text": "to bob@example.com", "messages": [{"content": "+1 415 555 0100"}],
              "payload": b"\x00secret", "attempt": 2}
    assert mask(record) == {"text": "to [email]", "messages": [{"content": "[phone]"}],
                            "payload": "[7 bytes]", "attempt": 2}
