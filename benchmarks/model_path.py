"""The model path's options, measured side by side on one stack (``bench throughput``).

Sequential calls of the simulated model, from a process that is not part of Ray:

- ``http via ingress``: POST /generate (proxy → ingress replica → generator replica);
- ``http direct``: POST /model/generate (proxy → generator replica), what the dispatcher
  uses;
- ``deployment handle``: a driver process (``ray.init(address=...)``, as a worker would
  have to become) calling the generator's DeploymentHandle (no proxy, no HTTP). Run in a
  child process, which also reports what being a driver costs: the time ``ray.init`` takes
  and the resident memory it adds.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

GENERATE_PATH = "/model/generate"
"""clawstream.inference.protocol.GENERATE_PATH, spelled out so that this module also
measures an older app (the benchmark's "before" run), which answers it with a 404."""


async def http_calls(serve_url: str, path: str, n: int) -> list[float]:
    """One pooled keep-alive connection, as the dispatcher's client keeps."""
    async with httpx.AsyncClient(base_url=serve_url, timeout=30) as http:
        times = []
        for i in range(n):
            t = time.perf_counter()
            response = await http.post(path, json={
                "messages": [{"role": "user", "content": f"q {i}"}], "max_tokens": 16})
            response.raise_for_status()
            times.append((time.perf_counter() - t) * 1000)
    return times


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def handle_calls(ray_address: str, n: int) -> dict[str, Any]:
    """In this process: become a driver, then call the generator's handle ``n`` times."""
    rss_before = _rss_mib()
    t = time.perf_counter()
    import ray
    from ray import serve

    from clawstream.inference.app import GENERATOR_APP_NAME
    from clawstream.inference.protocol import GenerateRequest

    ray.init(address=ray_address, log_to_driver=False, configure_logging=False)
    handle = serve.get_deployment_handle("generator", app_name=GENERATOR_APP_NAME)
    init_s = time.perf_counter() - t

    async def calls() -> list[float]:
        times = []
        for i in range(n):
            request = GenerateRequest.model_validate(
                {"messages": [{"role": "user", "content": f"q {i}"}], "max_tokens": 16})
            t = time.perf_counter()
            await handle.generate.remote(request, time.time())
            times.append((time.perf_counter() - t) * 1000)
        return times

    times = asyncio.run(calls())
    ray.shutdown()
    return {"times": times, "init_s": init_s, "rss_added_mib": _rss_mib() - rss_before}


def measure(settings: Any, n: int) -> dict[str, dict[str, Any]]:
    """Every option's call times (and the handle's driver costs)."""
    out: dict[str, dict[str, Any]] = {}
    for label, path in (("http via ingress (/generate)", "/generate"),
                        (f"http direct ({GENERATE_PATH})", GENERATE_PATH)):
        try:
            asyncio.run(http_calls(settings.serve_url, path, 20))  # warm the connections
            out[label] = {"times": asyncio.run(http_calls(settings.serve_url, path, n))}
        except httpx.HTTPError as exc:  # an app without that route (an older version)
            out[label] = {"times": [], "error": f"{type(exc).__name__}: {exc}"}
    child = subprocess.run([sys.executable, "-m", "benchmarks.model_path", settings.ray_address,
                            str(n)], capture_output=True, text=True, timeout=300)
    lines = [line for line in child.stdout.splitlines() if line.startswith("{")]
    if lines:
        out["deployment handle (worker as a Ray driver)"] = json.loads(lines[-1])
    else:
        out["deployment handle (worker as a Ray driver)"] = {"times": [],
                                                             "error": child.stderr[-500:]}
    return out


if __name__ == "__main__":
    print(json.dumps(handle_calls(sys.argv[1], int(sys.argv[2]))), flush=True)
