"""Regression sets: a team's scenarios for one agent, and the pure judgement of an answer.

A set is a YAML (or JSON) file a team keeps next to its agent::

    agent: team-helpdesk
    scenarios:
      - name: opens a ticket
        turns:
          - user: "My printer is on fire, open a ticket"
            script: [...]            # optional: the scripted model's turns (test stacks)
            expect:
              status: [ok]            # default: ok
              contains: ["ticket"]
              not_contains: ["sorry"]
              regex: "T-[0-9a-f]+"
              json_schema: {type: object, required: [ticket]}
              tool_called: [open_ticket]
              tool_not_called: [fault_effect]
              max_steps: 4
              max_tokens: 800
              similar_to: {reference: "I opened a ticket.", threshold: 0.6}

Every expectation of a turn is checked and every failed one is named, so a verdict's
reason says exactly what changed. Pure (no I/O): the semantic similarity arrives as a
number the runner measured with the project's MiniLM embedder.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from clawstream.schemas.records import AgentAnswer


class Similarity(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reference: str = Field(min_length=1)
    threshold: float = Field(default=0.7, ge=-1.0, le=1.0)


class Expect(BaseModel):
    """What one answer must satisfy."""

    model_config = ConfigDict(extra="forbid")

    status: list[str] = Field(default_factory=lambda: ["ok"])
    contains: list[str] = Field(default_factory=list)
    not_contains: list[str] = Field(default_factory=list)
    regex: str | None = None
    json_schema: dict[str, Any] | None = None
    tool_called: list[str] = Field(default_factory=list)
    tool_not_called: list[str] = Field(default_factory=list)
    max_steps: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)
    similar_to: Similarity | None = None

    @field_validator("contains", "not_contains", "tool_called", "tool_not_called", "status",
                     mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regex: {exc}") from None
        return value

    @field_validator("json_schema")
    @classmethod
    def _is_a_schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            try:
                Draft202012Validator.check_schema(value)
            except SchemaError as exc:
                raise ValueError(f"not a JSON schema: {exc.message}") from None
        return value


class Turn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: str = Field(min_length=1)
    expect: Expect = Field(default_factory=Expect)
    script: list[dict[str, Any]] | None = None
    """The scripted model's turns for this request (a test stack's fixture): the runner
    registers them under a marker it appends to the user's text."""


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    turns: list[Turn] = Field(min_length=1)


class EvalSet(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent: str | None = None
    scenarios: list[Scenario] = Field(min_length=1)

    @field_validator("scenarios")
    @classmethod
    def _unique_names(cls, value: list[Scenario]) -> list[Scenario]:
        names = [s.name for s in value]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"scenario names repeat: {', '.join(repeated)}")
        return value


class SetError(ValueError):
    """The file is not a regression set; the message says where."""


def load_set(path: Path) -> EvalSet:
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SetError(f"{path}: {exc}") from None
    try:
        return EvalSet.model_validate(raw)
    except ValidationError as exc:
        raise SetError(f"{path}: {exc}") from None


def tools_called(answer: AgentAnswer) -> list[str]:
    return [e["name"] for e in answer["timeline"] if e["step_type"] == "tool"]


def tokens_of(answer: AgentAnswer) -> int:
    return answer["usage"]["prompt_tokens"] + answer["usage"]["completion_tokens"]


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


def failures(expect: Expect, answer: AgentAnswer, similarity: float | None = None
             ) -> list[str]:
    """Every expectation ``answer`` misses, in words; empty: it passes. ``similarity``: the
    cosine of the answer and ``expect.similar_to``'s reference (the runner embeds them)."""
    text = answer["text"]
    found: list[str] = []
    if answer["status"] not in expect.status:
        why = f": {answer['reason']}" if answer.get("reason") else ""
        found.append(f"status {answer['status']}{why} (expected {'/'.join(expect.status)})")
    found += [f"does not contain {s!r}" for s in expect.contains if s not in text]
    found += [f"contains {s!r}" for s in expect.not_contains if s in text]
    if expect.regex is not None and not re.search(expect.regex, text):
        found.append(f"does not match /{expect.regex}/")
    if expect.json_schema is not None:
        found += _schema_failures(expect.json_schema, text)
    called = tools_called(answer)
    found += [f"did not call {t}" for t in expect.tool_called if t not in called]
    found += [f"called {t}" for t in expect.tool_not_called if t in called]
    steps = len(answer["timeline"])
    if expect.max_steps is not None and steps > expect.max_steps:
        found.append(f"{steps} steps > {expect.max_steps}")
    tokens = tokens_of(answer)
    if expect.max_tokens is not None and tokens > expect.max_tokens:
        found.append(f"{tokens} tokens > {expect.max_tokens}")
    if expect.similar_to is not None:
        if similarity is None:
            found.append("similarity was not measured")
        elif similarity < expect.similar_to.threshold:
            found.append(f"similarity {similarity:.2f} < {expect.similar_to.threshold:.2f}")
    return found


def _schema_failures(schema: dict[str, Any], text: str) -> list[str]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        return ["is not JSON"]
    errors = sorted(Draft202012Validator(schema).iter_errors(document), key=str)
    return [f"JSON schema: {e.message}" for e in errors[:3]]
