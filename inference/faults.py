"""Injected model failures for the reliability tests: a TEST FIXTURE, off unless the stack
is started with ``CLAWSTREAM_FAULT_INJECTION=true``.

A rule makes the next ``times`` /generate calls whose prompt contains ``match`` fail with
``status`` (503 with Retry-After, or 500), before any model time is spent. Matching on the
prompt lets a test break its own conversation while others run normally.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from clawstream.inference.errors import BackendFailure, Overloaded
from clawstream.inference.protocol import GenerateRequest


class FaultRule(BaseModel):
    match: str = Field(min_length=1)
    status: Literal[500, 503] = 503
    times: int = Field(default=1, ge=1)
    retry_after_s: float | None = Field(default=None, ge=0)


class FaultPlan:
    def __init__(self) -> None:
        self._rules: list[FaultRule] = []

    def add(self, rule: FaultRule) -> None:
        self._rules.append(rule.model_copy())

    def check(self, request: GenerateRequest) -> None:
        """Raise the first matching rule's failure and count it down."""
        for rule in self._rules:
            if rule.times > 0 and any(rule.match in m.content for m in request.messages):
                rule.times -= 1
                message = f"injected fault ({rule.times} left) for prompts with {rule.match!r}"
                if rule.status == 503:
                    raise Overloaded(message, rule.retry_after_s)
                raise BackendFailure(message)
