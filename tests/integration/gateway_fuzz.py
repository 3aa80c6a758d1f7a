"""Fuzzing the gateway's HTTP surface from its own OpenAPI document (schemathesis):
valid and invalid requests for every operation, with and without a key; a run fails on any
5xx other than a deliberate 503/504 answer, and on a gateway that stops answering."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode, openapi

from clawstream.gateway.app import create_app

EXAMPLES = 40
EXPECTED_5XX = {503, 504}
"""Overloaded and deadline are answers, not failures."""


def fuzz(base_url: str, key: str, examples: int = EXAMPLES) -> list[str]:
    schema = openapi.from_dict(create_app().openapi())
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _run(operation, mode, base_url, key, examples, failures)
    return failures


def _run(operation: Any, mode: GenerationMode, base_url: str, key: str, examples: int,
         failures: list[str]) -> None:
    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode), with_key=st.booleans())
    def one(case: Any, with_key: bool) -> None:
        headers = {"Authorization": f"Bearer {key}"} if with_key else {}
        # A valid request for a real agent would run it: the fuzz keeps deadlines short.
        headers["X-Clawstream-Deadline-S"] = "0.5"
        response = case.call(base_url=base_url, headers=headers, timeout=30)
        if response.status_code >= 500 and response.status_code not in EXPECTED_5XX:
            failures.append(f"{operation.label} ({mode.value}): {response.status_code} "
                            f"{response.text[:200]}")

    one()
