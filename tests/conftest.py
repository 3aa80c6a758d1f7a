"""The real local stack for integration tests, on its own ports and state directory so a
developer's running stack is left alone. Started once per session, torn down at the end."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from clawstream.config import PoolSpec, Settings
from clawstream.deploy.local.env import isolated_env
from clawstream.schemas.codec import registry_in_use, use_registry
from tests.integration import upstream
from tests.integration.otlp_collector import Collector, collector


def _pools_with_an_upstream() -> str:
    """The default pools plus ``remote``: a model served by an OpenAI-compatible upstream
    (llama.cpp's server behind the tests' fault proxy, tests/integration/upstream.py)."""
    defaults: dict[str, PoolSpec] = Settings.model_fields["pools"].get_default(
        call_default_factory=True)
    pools = {name: spec.model_dump(exclude_none=True) for name, spec in defaults.items()}
    pools["remote"] = upstream.pool_spec()
    return json.dumps(pools)


REPO_ROOT = Path(__file__).resolve().parents[1]
OTLP_PORT = 24318 + int(os.environ.get("CLAWSTREAM_PORT_OFFSET", "0"))
TEST_ENV = {
    **isolated_env(REPO_ROOT / ".clawstream-test", {
        "kafka_port": 29092, "kafka_controller_port": 29093, "redis_port": 26379,
        "ray_port": 26390, "serve_http_port": 28000, "worker_web_port": 26066,
        "gateway_port": 28080, "ray_metrics_port": 26392, "prometheus_port": 29090,
        "schema_registry_port": 28085}),
    "CLAWSTREAM_INFERENCE_LLAMA_THREADS": "1",
    "CLAWSTREAM_CONTEXT_EXCHANGES": "4",
    "CLAWSTREAM_FAULT_INJECTION": "true",
    "CLAWSTREAM_AGENT_MODULES": "fixtures.faults,fixtures.team_agents",
    # Short run-time limits and backoff, so budget and retry tests take seconds.
    "CLAWSTREAM_RETRY_BASE_MS": "200",
    # Metrics tests wait one scrape for what a request changed.
    "CLAWSTREAM_PROMETHEUS_SCRAPE_INTERVAL_S": "1",
    "CLAWSTREAM_DRAIN_TIMEOUT_S": "10",
    "CLAWSTREAM_WORKER_STALL_TIMEOUT_S": "8",
    "CLAWSTREAM_POOLS": _pools_with_an_upstream(),
    # Every worker exports its answers' spans to the session's OTLP collector.
    "CLAWSTREAM_OTLP_ENDPOINT": f"http://127.0.0.1:{OTLP_PORT}",
    # The upstream's API key reaches the Serve replicas through Ray's environment, as a
    # provider key would; the fault proxy checks that it arrives.
    upstream.KEY_ENV: upstream.KEY,
}
os.environ.update(TEST_ENV)


@pytest.fixture(autouse=True)
def registry_binding() -> Iterator[None]:
    """Each test ends with the codec bound as it began: a command a test runs in this
    process (CliRunner) binds it to its own stack's registry, a side stack's say, which is
    gone once that test is over."""
    bound = registry_in_use()
    yield
    use_registry(bound)


@pytest.fixture(scope="session", autouse=True)
def otlp() -> Iterator[Collector]:
    """Up for the whole session: every worker of every test stack exports to it."""
    with collector(OTLP_PORT) as sink:
        yield sink


@pytest.fixture(scope="session")
def stack() -> Iterator[Settings]:
    from clawstream.deploy.local import down, up
    from clawstream.streams.schema_registry import bind, bind_settings

    settings = Settings()
    down(settings, purge=True)
    up(settings, with_workers=False)
    bind_settings(settings)  # what the tests publish: the registry's wire format
    try:
        yield settings
    finally:
        bind(None)
        down(settings, purge=True)


@pytest.fixture(scope="session")
def worker(stack: Settings) -> Iterator[Settings]:
    """One real Faust worker process (SIGKILL-able) on the test stack."""
    from clawstream.deploy.local import worker as worker_proc

    worker_proc.start(stack, 0)
    try:
        yield stack
    finally:
        worker_proc.stop_all(stack)


@pytest.fixture(scope="session")
def gateway(worker: Settings) -> Iterator[Settings]:
    """The HTTP gateway process (SIGKILL-able), as ``clawstream up`` starts it."""
    from clawstream.deploy.local import gateway as gateway_proc

    gateway_proc.start(worker)
    try:
        yield worker
    finally:
        gateway_proc.stop(worker)


@pytest.fixture(scope="session")
def upstream_proxy(stack: Settings) -> Iterator[upstream.FaultProxy]:
    """llama.cpp's OpenAI-compatible server and the fault proxy in front of it, where the
    test stack's ``remote`` pool sends its calls."""
    with upstream.llama_server(stack.log_dir) as url, upstream.fault_proxy(url) as proxy:
        yield proxy
