"""Request validation: what the app refuses before any model time is spent."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from clawstream.inference.protocol import (
    MAX_EMBED_TEXT_CHARS,
    MAX_EMBED_TEXTS,
    MAX_NEW_TOKENS_LIMIT,
    EmbedRequest,
    GenerateRequest,
)

USER = {"role": "user", "content": "hello"}


def test_defaults_are_greedy_and_leave_max_tokens_to_the_server() -> None:
    request = GenerateRequest.model_validate({"messages": [USER]})
    assert request.temperature == 0.0
    assert request.max_tokens is None
    assert request.model is None


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"messages": []},
        {"messages": [{"role": "tool", "content": "x"}]},
        {"messages": [{"role": "user"}]},
        {"messages": [{"role": "user", "content": 3}]},
        {"messages": [{**USER, "weight": "extra field"}]},
        {"messages": [USER], "max_tokens": 0},
        {"messages": [USER], "max_tokens": MAX_NEW_TOKENS_LIMIT + 1},
        {"messages": [USER], "temperature": -0.1},
        {"messages": [USER], "temperature": 2.5},
        {"messages": [USER], "top_p": 0.9},
        {"messages": "hello"},
    ],
)
def test_generate_rejects(payload: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        GenerateRequest.model_validate(payload)


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"texts": []},
        {"texts": "not a list"},
        {"texts": [1, 2]},
        {"texts": ["x"] * (MAX_EMBED_TEXTS + 1)},
        {"texts": ["ok", "y" * (MAX_EMBED_TEXT_CHARS + 1)]},
    ],
)
def test_embed_rejects(payload: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        EmbedRequest.model_validate(payload)


def test_embed_error_points_at_the_offending_text() -> None:
    with pytest.raises(ValidationError) as info:
        EmbedRequest.model_validate({"texts": ["ok", "y" * (MAX_EMBED_TEXT_CHARS + 1)]})
    assert info.value.errors()[0]["loc"] == ("texts", 1)
