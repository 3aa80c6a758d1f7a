"""calfkit's equivalent of ``chat`` for ``bench throughput``: NOT part of clawstream.

Runs only under the separate virtual environment ``.calfkit-venv`` (``python -m venv
.calfkit-venv && .calfkit-venv/bin/pip install calfkit==0.13.0 faststream==0.7.5``:
faststream 0.7.6 changed a private function that calfkit 0.13 calls); calfkit is never a
dependency of the project. Two modes, both against the benchmark stack's broker:

- ``serve BOOTSTRAP DELAY_MS``: a calfkit worker hosting one agent whose model is a local
  function that answers after DELAY_MS (the same instant model as the simulated backend);
- ``load BOOTSTRAP RATE DURATION_S``: open-loop ``start()`` calls at RATE per second for
  DURATION_S, each awaited for its result; prints one JSON line with the latencies (ms)
  and how many answered.

calfkit does less per request than clawstream (no durable conversation state, no dedup,
no audit events, no caches or limits); the comparison is the runtime's overhead on the
same broker and machine, not equal work.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

AGENT = "bench-chat"


def _model(delay_ms: float) -> Any:
    from calfkit._vendor.pydantic_ai.messages import ModelResponse, TextPart
    from calfkit._vendor.pydantic_ai.models.function import FunctionModel

    async def instant(_messages: Any, _info: Any) -> Any:
        await asyncio.sleep(delay_ms / 1000)
        return ModelResponse(parts=[TextPart("simulated answer")])

    return FunctionModel(instant, model_name="simulated-instant")


def _client(bootstrap: str) -> Any:
    from calfkit import Client, ProvisioningConfig

    return Client.connect(bootstrap, provisioning=ProvisioningConfig(enabled=True))


async def serve(bootstrap: str, delay_ms: float) -> None:
    from calfkit.nodes import Agent
    from calfkit.worker import Worker

    agent = Agent(name=AGENT, system_prompt="Answer in one short sentence.",
                  model_client=_model(delay_ms), subscribe_topics=[f"{AGENT}.requests"])
    await Worker(_client(bootstrap), nodes=[agent], max_workers=16).run()


async def load(bootstrap: str, rate: float, duration_s: float) -> None:
    from calfkit import ClientTimeoutError

    client = _client(bootstrap)
    gateway = client.agent(topic=f"{AGENT}.requests")
    # Until the worker has joined its group: a request published before that is not seen
    # (its subscriber starts at the end of the topic).
    for attempt in range(12):
        try:
            await gateway.execute("warm up", timeout=10)
            break
        except ClientTimeoutError:
            if attempt == 11:
                raise
    answers: list[tuple[float, float]] = []  # (sent at, s after the start; latency, ms)

    async def one() -> None:
        started = time.perf_counter()
        handle = await gateway.start("Say hello")
        await handle.result(timeout=60)
        answers.append((started - t0, (time.perf_counter() - started) * 1000))

    tasks = []
    n = max(1, int(rate * duration_s))
    t0 = time.perf_counter()
    for i in range(n):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
    await asyncio.wait(tasks, timeout=duration_s + 60)
    print(json.dumps({"sent": n, "answers": answers}), flush=True)
    await client.aclose()


if __name__ == "__main__":
    mode, bootstrap, *args = sys.argv[1:]
    if mode == "serve":
        asyncio.run(serve(bootstrap, float(args[0])))
    else:
        asyncio.run(load(bootstrap, float(args[0]), float(args[1])))
