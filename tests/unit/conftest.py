"""Unit tests see the codec of a process without a schema registry, whatever ran before
them: the integration tests' session binds this process to the test stack's registry
(tests/conftest.py), and a full run takes the unit tests after them. And settings without
logins, unless a test turns auth on."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from clawstream.schemas.codec import registry_in_use, use_registry


@pytest.fixture(autouse=True)
def no_logins(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings without auth unless a test asks for it (``auth=True``): a unit test builds
    apps and clients on a state dir where no `up` has written secrets."""
    monkeypatch.setenv("CLAWSTREAM_AUTH", "false")


@pytest.fixture(autouse=True)
def single_object_codec() -> Iterator[None]:
    bound = registry_in_use()
    use_registry(None)
    try:
        yield
    finally:
        use_registry(bound)
