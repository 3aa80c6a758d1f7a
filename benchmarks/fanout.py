"""``just bench fanout``: a parent delegating to 1, 4, 16 and 64 sub-agents at once
(issue 15), with the SCRIPTED model fixture.

The parent (``team-bench-fanout``) is a declared fan-out of N tasks to researchers (a
model turn is held to 32 calls, so 64 ``delegate`` calls cannot come from one turn); each
child (``team-researcher``, a request of its own, run by its own conversation's
coordinator) answers after ``child_ms`` (its scripted model turn); the parent joins them
and answers with their answers. From the parent's timeline: the fan-out's wall time (the
first delegation issued to the last child's answer back at the parent) against the child
time (ideal: ~1x, the children run in parallel), and what the runtime adds per child
((wall - child time) / N).
Median of ``--runs`` parents per width, one parent at a time.
"""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Any

import httpx
import typer
from rich.table import Table

from benchmarks.agents import ENV as AGENTS_ENV
from benchmarks.common import bench_stack, console

ENV = {**AGENTS_ENV, "CLAWSTREAM_CONVERSATION_MAX_STEPS": "1000"}
"""A parent of 64 children takes 64 steps: out of flow control's way."""


def _script(settings: Any, marker: str, turns: list[dict[str, Any]]) -> None:
    httpx.post(f"{settings.serve_url}/script", json={"marker": marker, "turns": turns},
               timeout=10).raise_for_status()


def fan_out(settings: Any, width: int, child_ms: float) -> dict[str, float]:
    """One parent with ``width`` children: its fan-out figures, from its answer."""
    from clawstream.streams.publisher import Publisher, new_request, publish_request
    from clawstream.streams.subscriber import wait_for_answer
    from clawstream.streams.topics import ANSWERS

    marker = f"bench-child-{uuid.uuid4().hex}"  # one script: every child's task has it
    _script(settings, marker, [{"delay_ms": child_ms, "text": "found"}])
    request = new_request(agent="team-bench-fanout", conversation_id=uuid.uuid4().hex,
                          text=f"look up {marker}", deadline_s=120,
                          options={"children": str(width)})
    began = time.time() * 1000
    publish_request(Publisher(settings.bootstrap_servers), request)
    answer = wait_for_answer(settings.bootstrap_servers, ANSWERS.name,
                             idempotency_key=request["idempotency_key"],
                             conversation_id=request["conversation_id"], timeout_s=180)
    if answer is None or answer["status"] != "ok":
        raise SystemExit(f"the parent with {width} children was not answered ok: {answer}")
    agents = [e for e in answer["timeline"] if e["step_type"] == "agent" and e["depth"] == 0]
    if len(agents) != width or any(e["agent_status"] != "ok" for e in agents):
        raise SystemExit(f"{width} children asked for, {len(agents)} joined: {answer}")
    first = min(e["issued_at_ms"] for e in agents)
    back = max(e["issued_at_ms"] + e["queue_wait_ms"] + e["run_ms"] + e["result_wait_ms"]
               for e in agents)
    wall = back - first
    return {"wall": wall, "ratio": wall / child_ms, "per_child": (wall - child_ms) / width,
            "e2e": answer["answered_at_ms"] - began}


def main(runs: int = 5, widths: str = "1,4,16,64", child_ms: float = 1000.0,
         dispatch_concurrency: int = 64, keep_stack: bool = False) -> None:
    """``dispatch_concurrency``: model calls in flight per worker (the setting's default,
    4, makes 16 children run in four waves: the model pool's cap, not the fan-out's)."""
    sizes = [int(w) for w in widths.split(",")]
    results: dict[int, list[dict[str, float]]] = {w: [] for w in sizes}
    env = {**ENV, "CLAWSTREAM_DISPATCH_CONCURRENCY": str(dispatch_concurrency),
           "CLAWSTREAM_INFERENCE_MAX_QUEUED_REQUESTS": "128"}
    with bench_stack(env=env, keep=keep_stack) as settings:
        console.print(f"[bold]bench fanout[/]: widths {widths}, {runs} runs each, scripted "
                      f"model: each child {child_ms:g} ms; {dispatch_concurrency} model "
                      "calls in flight per worker")
        fan_out(settings, 1, child_ms)  # warm-up: first use of every topic
        for _ in range(runs):
            for width in sizes:
                results[width].append(fan_out(settings, width, child_ms))
    table = Table("children", "runs", "fan-out wall ms", "wall / child time",
                  "added per child ms", "parent e2e ms",
                  title=f"fan-out against a child time of {child_ms:g} ms (medians)")
    for width, rows in results.items():
        def med(key: str, rows: list[dict[str, float]] = rows) -> float:
            return statistics.median(r[key] for r in rows)
        table.add_row(str(width), str(len(rows)), f"{med('wall'):.0f}",
                      f"{med('ratio'):.2f}x", f"{med('per_child'):.1f}", f"{med('e2e'):.0f}")
    console.print(table)


if __name__ == "__main__":
    typer.run(main)
