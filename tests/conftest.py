"""The real local stack for integration tests, on its own ports and state directory so a
developer's running stack is left alone. Started once per session, torn down at the end."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from clawstream.settings import REPO_ROOT, Settings

TEST_ENV = {
    "CLAWSTREAM_STATE_DIR": str(REPO_ROOT / ".clawstream-test"),
    "CLAWSTREAM_KAFKA_PORT": "29092",
    "CLAWSTREAM_KAFKA_CONTROLLER_PORT": "29093",
    "CLAWSTREAM_REDIS_PORT": "26379",
    "CLAWSTREAM_RAY_PORT": "26390",
    "CLAWSTREAM_SERVE_HTTP_PORT": "28000",
    "CLAWSTREAM_WORKER_WEB_PORT": "26066",
    "CLAWSTREAM_INFERENCE_LLAMA_THREADS": "1",
}
os.environ.update(TEST_ENV)


@pytest.fixture(scope="session")
def stack() -> Iterator[Settings]:
    from deploy.local import down, up
    from streams.admin import ensure_topics

    settings = Settings()
    down(settings, purge=True)
    up(settings, with_workers=False)
    ensure_topics(settings.bootstrap_servers, settings.partitions)
    try:
        yield settings
    finally:
        down(settings, purge=True)


@pytest.fixture(scope="session")
def worker(stack: Settings) -> Iterator[Settings]:
    """One real Faust worker process (SIGKILL-able) on the test stack."""
    from deploy.local import worker as worker_proc

    worker_proc.start(stack, 0)
    try:
        yield stack
    finally:
        worker_proc.stop_all(stack)
