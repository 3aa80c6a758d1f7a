"""What every benchmark shares: its own stack (ports, state dir), percentiles, the console.

Benchmarks run on a side stack so a developer's stack and the test stack stay untouched;
``CLAWSTREAM_PORT_OFFSET`` moves it when two checkouts benchmark at once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console

from clawstream.config import Settings
from clawstream.deploy.local.env import isolated_env

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_ENV = {
    **isolated_env(REPO_ROOT / ".clawstream-bench", {
        "kafka_port": 39092, "kafka_controller_port": 39093, "redis_port": 36379,
        "ray_port": 36390, "serve_http_port": 38000, "worker_web_port": 36066}),
    "CLAWSTREAM_INFERENCE_BACKEND": "simulated",
}
console = Console()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@contextmanager
def bench_stack(workers: int = 1, env: Mapping[str, str] | None = None,
                keep: bool = False) -> Iterator[Settings]:
    """Start a fresh benchmark stack (simulated model unless ``env`` says otherwise) with
    ``workers`` Faust workers, and stop it afterwards unless ``keep``."""
    os.environ.update(BENCH_ENV)
    os.environ.update(env or {})
    from clawstream.config import get_settings
    from clawstream.deploy.local import RichProgress, down, up
    from clawstream.deploy.local import worker as worker_proc

    get_settings.cache_clear()
    settings = Settings()
    down(settings, purge=True)  # a fresh stack: no topics, tables or Redis keys of a last run
    up(settings, with_workers=False, progress=RichProgress(console), redeploy=True)
    for index in range(workers):
        worker_proc.start(settings, index)
    try:
        yield settings
    finally:
        if not keep:
            down(settings)
