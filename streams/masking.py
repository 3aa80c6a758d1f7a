"""Personal data out of what operators and analysts read: traces, exports, listings.

Why here and by pattern: user text travels inside records (requests, prompts, tool
arguments, answers, dead letters' payloads), and the readers of traces and exports are
not the people the text belongs to. Emails, phone numbers, card numbers (Luhn-checked, so
an order number is left alone), IBANs (mod-97-checked) and configured patterns become a
tag such as ``[email]``; raw text only for a reader who asks for it (``--raw``).

Every pattern is bounded by non-word characters, so ids (hex, uuids, hashes) that happen
to hold a run of digits are never masked.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
                    r"(?![\w-])")
_CARD = re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])")
_IBAN = re.compile(r"(?<!\w)[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}(?!\w)")
_PHONE = re.compile(r"(?<![\w+/-])(?<!\d[ .-])(?!\d{4}-\d\d-\d\d)"  # not in an id, not a date
                    r"(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?"
                    r"\d(?:[ .-]?\d){6,13}(?![\w/-]|[ .-]?\d)")


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(text: str) -> bool:
    compact = text.replace(" ", "")
    moved = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in moved)
    return 15 <= len(compact) <= 34 and int(number) % 97 == 1


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    return "[card]" if 13 <= len(digits) <= 19 and luhn_ok(digits) else match.group(0)


def _iban(match: re.Match[str]) -> str:
    return "[iban]" if iban_ok(match.group(0)) else match.group(0)


def mask_text(text: str, extra: Iterable[re.Pattern[str]] = ()) -> str:
    """``text`` with every piece of personal data it holds replaced by its kind."""
    text = _EMAIL.sub("[email]", text)
    text = _IBAN.sub(_iban, text)
    text = _CARD.sub(_card, text)
    text = _PHONE.sub("[phone]", text)
    for pattern in extra:
        text = pattern.sub("[masked]", text)
    return text


def mask(value: Any, extra: Iterable[re.Pattern[str]] = ()) -> Any:
    """Every string inside ``value`` (dicts and lists walked) masked; bytes dropped to a
    length, since they cannot be masked without decoding them."""
    patterns = tuple(extra)
    if isinstance(value, str):
        return mask_text(value, patterns)
    if isinstance(value, bytes):
        return f"[{len(value)} bytes]"
    if isinstance(value, dict):
        return {k: mask(v, patterns) for k, v in value.items()}
    if isinstance(value, list):
        return [mask(v, patterns) for v in value]
    return value
