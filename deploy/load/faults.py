"""Process and model faults injected into a running stack: a worker SIGKILLed (its
supervisor starts it again, as ``up`` set it up), a broker SIGKILLed and started again after
an outage, Redis likewise; model 5xx registered on the Serve app's fault plan. Shared with
``bench chaos``."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from clawstream.config import Settings
from clawstream.deploy.load.plan import MODEL_FAULT_MARK


def inject(settings: Settings, what: str, down_s: float, say: Callable[[str], None]) -> None:
    """``worker-N``: SIGKILL it (its supervisor restarts it). ``kafka``: SIGKILL the last
    broker (of three, the others keep serving), start it again after ``down_s``.
    ``redis``: SIGKILL, start again after ``down_s``."""
    from clawstream.deploy.local import kafka, redis
    from clawstream.deploy.local import worker as worker_proc
    from clawstream.deploy.local.process import Processes

    procs = Processes(settings.run_dir, settings.log_dir)
    if what.startswith("worker-"):
        worker_proc.kill(settings, int(what.removeprefix("worker-")))
        say(f"SIGKILL {what} (its supervisor starts it again)")
        return
    if what == "kafka":
        node = settings.kafka_brokers
        procs.kill(kafka.node_name(node))
        say(f"SIGKILL {kafka.node_name(node)}; back in {down_s:g} s")
        time.sleep(down_s)  # the outage: how long the broker stays away
        t = time.monotonic()
        kafka.start_node(settings, node)
    elif what == "redis":
        procs.kill(redis.NAME)
        say(f"SIGKILL redis; back in {down_s:g} s")
        time.sleep(down_s)
        t = time.monotonic()
        redis.start(settings)
    else:
        raise ValueError(f"unknown fault {what!r}")
    say(f"{what} restarted, ready after {time.monotonic() - t:.1f} s")


def model_errors(settings: Settings, count: int) -> None:
    """Make the next ``count`` model calls whose prompt carries the load's fault mark fail
    with 503 (the Serve app's fault plan, on with ``CLAWSTREAM_FAULT_INJECTION``)."""
    if count <= 0:
        return
    response = httpx.post(f"{settings.serve_url}/faults", timeout=10.0, json={
        "match": MODEL_FAULT_MARK, "status": 503, "times": count, "retry_after_s": 0.2})
    response.raise_for_status()
