"""``just bench gateway``: what the HTTP gateway adds, under open-loop load.

For each offered rate (10 req/s, doubling, until the stack saturates) the same kind of
request is sent three ways, one after the other, on one stack with the SIMULATED model:

- ``kafka``: published straight to the request topic and awaited on the answer topic
  (the same producer and answer index the gateway uses, in this process);
- ``http``: ``POST /v1/chat/completions`` (``agent/chat``) through the gateway;
- ``stream``: the same with ``stream: true``; its time to the first token (the first chunk
  with content) is reported too.

``--ttft N`` adds (``--ttft-only``: only) a quiet phase, one request at a time: N requests
without streaming and N streamed, alternately, each a new question; it reports the full
answer time of both and the streamed time to first token, median per run and the median
of the runs. ``--model local`` runs the stack on the real local model (SmolLM2, llama.cpp)
instead of the simulated one, where time to first token and answer time differ most.

Open loop: requests start on a fixed schedule whatever the earlier ones do, so a slow
gateway shows as latency instead of slowing the load. The gateway's overhead is the
difference of the percentiles (http minus kafka) at the same rate; with ``--runs`` the
levels are run again and each figure is the median over the runs.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from benchmarks.common import UNLIMITED, bench_stack, console, pct

Arm = str
ARMS: tuple[Arm, ...] = ("kafka", "http", "stream")


@dataclass
class Level:
    rate: float
    arm: Arm
    latencies_ms: list[float] = field(default_factory=list)
    first_chunk_ms: list[float] = field(default_factory=list)
    errors: int = 0
    sent: int = 0
    wall_s: float = 0.0

    @property
    def achieved(self) -> float:
        return len(self.latencies_ms) / self.wall_s if self.wall_s else 0.0

    def p(self, q: float) -> float:
        return pct(self.latencies_ms, q) if self.latencies_ms else float("nan")


class Direct:
    """The baseline: the gateway's own publisher and answer index, without HTTP."""

    def __init__(self, bootstrap: str) -> None:
        from clawstream.gateway.index import AnswerIndex
        from clawstream.streams.publisher import AsyncPublisher

        self.index = AnswerIndex(bootstrap)
        self.publisher = AsyncPublisher(bootstrap)

    async def ask(self, text: str) -> None:
        from clawstream.gateway.index import is_answer
        from clawstream.schemas.names import AGENT_REQUEST
        from clawstream.streams.publisher import new_request
        from clawstream.streams.topics import request_topic

        request = new_request(agent="chat", conversation_id=f"bench/{uuid.uuid4().hex}",
                              text=text, tenant_id="bench", user_id=uuid.uuid4().hex)
        watch = self.index.watch(request["request_id"], request["conversation_id"])
        try:
            await self.publisher.publish(request_topic("interactive").name,
                                         request["conversation_id"], AGENT_REQUEST, request)
            while True:
                name, record = await watch.queue.get()
                if is_answer(name):
                    if record["status"] != "ok":
                        raise RuntimeError(record["reason"])
                    return
        finally:
            self.index.close(watch)


async def via_http(client: httpx.AsyncClient, text: str, stream: bool, start: float
                   ) -> float | None:
    """One request through the gateway; for a stream, the ms to its first token (the first
    chunk with content: the role chunk before it carries none)."""
    body = {"model": "agent/chat", "messages": [{"role": "user", "content": text}]}
    headers = {"X-Clawstream-User": uuid.uuid4().hex}
    if not stream:
        response = await client.post("/v1/chat/completions", json=body, headers=headers)
        response.raise_for_status()
        return None
    first: float | None = None
    async with client.stream("POST", "/v1/chat/completions", headers=headers,
                             json={**body, "stream": True}) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line == "data: [DONE]":
                return first
            if first is None and line.startswith("data: ") and _has_content(line[6:]):
                first = (time.perf_counter() - start) * 1000
    raise RuntimeError("stream ended without [DONE]")


def _has_content(data: str) -> bool:
    chunk = json.loads(data)
    return bool(chunk.get("choices") and chunk["choices"][0]["delta"].get("content"))


@dataclass
class TtftRun:
    """One quiet run: full answer times without and with streaming, and time to first token."""

    plain_ms: list[float] = field(default_factory=list)
    stream_ms: list[float] = field(default_factory=list)
    first_token_ms: list[float] = field(default_factory=list)


async def measure_ttft(settings: Any, key: str, requests: int, runs: int) -> list[TtftRun]:
    """One request at a time, plain and streamed alternately (the first pair warms up)."""
    results: list[TtftRun] = []
    async with httpx.AsyncClient(base_url=settings.gateway_url, timeout=300,
                                 headers={"Authorization": f"Bearer {key}"}) as client:
        for run in range(runs + 1):
            current = TtftRun()
            for _ in range(1 if run == 0 else requests):
                for stream in (False, True):
                    text = f"Describe a city in two sentences. ({uuid.uuid4().hex[:8]})"
                    start = time.perf_counter()
                    first = await via_http(client, text, stream, start)
                    elapsed = (time.perf_counter() - start) * 1000
                    if stream:
                        current.stream_ms.append(elapsed)
                        if first is not None:
                            current.first_token_ms.append(first)
                    else:
                        current.plain_ms.append(elapsed)
            if run:
                results.append(current)
                plain = statistics.median(current.plain_ms)
                console.print(f"ttft run {run}: plain p50 {plain:.0f}"
                              f" ms, stream p50 {statistics.median(current.stream_ms):.0f} ms, "
                              f"first token p50 {statistics.median(current.first_token_ms):.0f} ms")
    return results


def report_ttft(results: list[TtftRun], model: str) -> None:
    table = Table("run", "requests", "plain: answer p50", "stream: first token p50",
                  "stream: answer p50", "first token / plain answer",
                  title=f"time to first token, one request at a time, ms ({model} model)")
    rows = [(statistics.median(r.plain_ms), statistics.median(r.first_token_ms),
             statistics.median(r.stream_ms)) for r in results]
    for index, (run, (plain, first, stream)) in enumerate(zip(results, rows, strict=True)):
        table.add_row(str(index + 1), str(len(run.plain_ms)), f"{plain:.0f}", f"{first:.0f}",
                      f"{stream:.0f}", f"{first / plain:.2f}")
    plain, first, stream = (statistics.median(col) for col in zip(*rows, strict=True))
    table.add_row("median", "", f"{plain:.0f}", f"{first:.0f}", f"{stream:.0f}",
                  f"{first / plain:.2f}")
    Console(width=200).print(table)


async def run_level(rate: float, arm: Arm, duration_s: float, direct: Direct,
                    client: httpx.AsyncClient) -> Level:
    level = Level(rate, arm)
    tasks = []

    async def one(i: int) -> None:
        start = time.perf_counter()
        text = f"benchmark question {uuid.uuid4().hex} #{i}"
        try:
            if arm == "kafka":
                await direct.ask(text)
            else:
                first = await via_http(client, text, arm == "stream", start)
                if first is not None:
                    level.first_chunk_ms.append(first)
            level.latencies_ms.append((time.perf_counter() - start) * 1000)
        except Exception:
            level.errors += 1

    t0 = time.perf_counter()
    count = int(rate * duration_s)
    for i in range(count):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
        level.sent += 1
    await asyncio.gather(*tasks)
    level.wall_s = time.perf_counter() - t0
    return level


async def measure(settings: Any, key: str, rates: list[float], duration_s: float,
                  runs: int) -> list[list[Level]]:
    direct = Direct(settings.bootstrap_servers)
    await direct.index.start()
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=2000)
    results: list[list[Level]] = []
    async with httpx.AsyncClient(base_url=settings.gateway_url, limits=limits, timeout=120,
                                 headers={"Authorization": f"Bearer {key}"}) as client:
        for arm in ARMS:  # warm-up: connections, JIT-free but caches and consumers
            await run_level(5, arm, 2, direct, client)
        for run in range(runs):
            levels: list[Level] = []
            for rate in rates:
                row = [await run_level(rate, arm, duration_s, direct, client) for arm in ARMS]
                levels.extend(row)
                console.print(f"run {run + 1}, {rate:g} req/s: " + ", ".join(
                    f"{lv.arm} p50 {lv.p(0.5):.1f} ms ({lv.achieved:.0f}/s, {lv.errors} err)"
                    for lv in row))
                if any(lv.errors > 0.01 * lv.sent or lv.achieved < 0.8 * rate for lv in row):
                    break  # saturated: the next level would only queue
            results.append(levels)
    direct.index.stop()
    direct.publisher.close()
    return results


def report(results: list[list[Level]]) -> None:
    cells: dict[tuple[float, Arm], list[Level]] = defaultdict(list)
    for levels in results:
        for lv in levels:
            cells[(lv.rate, lv.arm)].append(lv)
    table = Table("req/s", "arm", "achieved/s", "errors", "p50", "p95", "p99",
                  "added p50", "added p95", "added p99", "first token p50",
                  title=f"gateway vs Kafka direct, ms (median of {len(results)} run(s))")
    for (rate, arm), runs in sorted(cells.items(), key=lambda kv: (kv[0][0],
                                                                   ARMS.index(kv[0][1]))):
        def med(q: float, levels: list[Level] = runs) -> float:
            return statistics.median(lv.p(q) for lv in levels)

        base = cells.get((rate, "kafka"), [])
        added = ["", "", ""] if arm == "kafka" or not base else [
            f"{med(q) - statistics.median(b.p(q) for b in base):.1f}" for q in (0.5, 0.95, 0.99)]
        first = [pct(lv.first_chunk_ms, 0.5) for lv in runs if lv.first_chunk_ms]
        table.add_row(f"{rate:g}", arm, f"{statistics.median(lv.achieved for lv in runs):.0f}",
                      str(sum(lv.errors for lv in runs)), f"{med(0.5):.1f}", f"{med(0.95):.1f}",
                      f"{med(0.99):.1f}", *added,
                      f"{statistics.median(first):.1f}" if first else "")
    Console(width=200).print(table)  # all columns, also into a log file


def main(rates: str = "10,20,40,80,160,320", duration: float = 6.0, runs: int = 3,
         keep_stack: bool = False, ttft: int = 0, ttft_only: bool = False,
         model: str = "simulated") -> None:
    from clawstream.deploy.local import gateway as gateway_proc
    from clawstream.gateway.apikeys import KeyStore

    async def new_key(url: str) -> str:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(url)
        try:
            return (await KeyStore(client).create("bench", "bench"))[1]
        finally:
            await client.aclose()

    if model not in ("simulated", "local"):
        raise typer.BadParameter("--model is simulated or local")
    env = {**UNLIMITED, **({"CLAWSTREAM_INFERENCE_BACKEND": "llama_cpp"} if model == "local"
                           else {})}
    with bench_stack(env=env, keep=keep_stack) as settings:
        gateway_proc.start(settings)
        try:
            key = asyncio.run(new_key(settings.redis_url))
            console.print(f"[bold]bench gateway[/]: rates {rates} req/s, {duration:g} s each, "
                          f"{runs} run(s), backend={settings.inference_backend} "
                          f"(simulated delay {settings.simulated_delay_ms:.0f} ms if simulated)")
            results = [] if ttft_only else asyncio.run(measure(
                settings, key, [float(r) for r in rates.split(",")], duration, runs))
            quiet = asyncio.run(measure_ttft(settings, key, ttft or 8, runs)
                                ) if ttft or ttft_only else []
        finally:
            gateway_proc.stop(settings)
        if results:
            report(results)
        if quiet:
            report_ttft(quiet, settings.inference_backend)


if __name__ == "__main__":
    typer.run(main)
