"""``just bench agents``: deciding agents (issue 12) with the SCRIPTED model fixture.

A seeded workload of multi-step requests: 0-3 tool turns, 1-4 parallel tool calls per
turn, the model answering after ``model_ms`` and each tool (``pause``) after ``tool_ms``.
For every answer the critical path of the work (each model call, plus the slowest tool
call of each turn) is known from its timeline, so what the runtime adds is the end-to-end
time minus that work: reported in total and per sequential step. A second series runs one
turn of 1, 4 and 16 parallel calls, to show how the fan-out and the join grow.
"""

from __future__ import annotations

import random
import statistics
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import typer
from rich.table import Table

from benchmarks.common import bench_stack, console, pct

ENV = {"CLAWSTREAM_FAULT_INJECTION": "true",
       "CLAWSTREAM_AGENT_MODULES": "fixtures.faults,fixtures.team_agents",
       # Out of the way: this measures the runtime, not the entrance limits or budgets.
       "CLAWSTREAM_TENANT_RATE_PER_S": "10000", "CLAWSTREAM_TENANT_BURST": "10000",
       "CLAWSTREAM_USER_RATE_PER_S": "10000", "CLAWSTREAM_USER_BURST": "10000"}


@dataclass(frozen=True)
class Shape:
    turns: int
    calls: int


def script(marker: str, shape: Shape, model_ms: float, tool_ms: int) -> dict[str, Any]:
    turns: list[dict[str, Any]] = [
        {"delay_ms": model_ms,
         "tool_calls": [{"name": "pause", "arguments": {"ms": tool_ms, "label": f"{t}.{c}"}}
                        for c in range(shape.calls)]}
        for t in range(shape.turns)]
    turns.append({"delay_ms": model_ms, "text": "done"})
    return {"marker": marker, "turns": turns}


def work_ms(answer: dict[str, Any]) -> tuple[float, int]:
    """The critical path of the answer's work, and its sequential steps (model calls and
    tool turns): each model run, plus the longest tool run between two model calls."""
    total, steps, turn_tools = 0.0, 0, []
    for entry in answer["timeline"]:
        if entry["step_type"] == "model":
            if turn_tools:
                total, steps, turn_tools = total + max(turn_tools), steps + 1, []
            total, steps = total + entry["run_ms"], steps + 1
        else:
            turn_tools.append(entry["run_ms"])
    return total, steps


def run_series(settings: Any, shapes: list[Shape], model_ms: float, tool_ms: int,
               in_flight: int) -> list[dict[str, float]]:
    from clawstream.schemas.names import AGENT_ANSWER
    from clawstream.streams.publisher import Publisher, new_request, publish_request
    from clawstream.streams.subscriber import read_topic
    from clawstream.streams.topics import ANSWERS

    publisher = Publisher(settings.bootstrap_servers)
    rows: list[dict[str, float]] = []
    for start in range(0, len(shapes), in_flight):
        batch = {}
        for shape in shapes[start:start + in_flight]:
            marker = f"bench-{uuid.uuid4().hex}"
            httpx.post(f"{settings.serve_url}/script",
                       json=script(marker, shape, model_ms, tool_ms), timeout=10
                       ).raise_for_status()
            request = new_request(agent="team-bench", conversation_id=uuid.uuid4().hex,
                                  text=f"work {marker}")
            batch[request["request_id"]] = shape
            publish_request(publisher, request)
        for name, record in read_topic(settings.bootstrap_servers, ANSWERS.name,
                                       timeout_s=120):
            answer = dict(record) if name == AGENT_ANSWER else {}
            shape = batch.pop(answer.get("request_id", ""), None)
            if shape is not None:
                received = time.time() * 1000
                if answer["status"] != "ok":
                    raise SystemExit(f"an answer was {answer['status']}: {answer}")
                work, steps = work_ms(answer)
                e2e = received - answer["created_at_ms"]
                rows.append({"e2e": e2e, "work": work, "steps": steps,
                             "overhead_per_step": (e2e - work) / steps,
                             "calls": shape.calls, "turns": shape.turns,
                             "step_count": len(answer["timeline"])})
            if not batch:
                break
        if batch:
            raise SystemExit(f"{len(batch)} request(s) got no answer: lost?")
    return rows


def main(requests: int = 60, in_flight: int = 4, model_ms: float = 20.0, tool_ms: int = 20,
         seed: int = 12, widths: str = "1,4,16", keep_stack: bool = False) -> None:
    rng = random.Random(seed)
    shapes = [Shape(rng.randint(0, 3), rng.randint(1, 4)) for _ in range(requests)]
    with bench_stack(env=ENV, keep=keep_stack) as settings:
        console.print(f"[bold]bench agents[/]: {requests} requests (seed {seed}), "
                      f"{in_flight} in flight, scripted model {model_ms:g} ms, tools "
                      f"{tool_ms} ms")
        began = time.monotonic()
        mixed = run_series(settings, shapes, model_ms, tool_ms, in_flight)
        wall = time.monotonic() - began
        fans = {width: run_series(settings, [Shape(1, width)] * 8, model_ms, tool_ms, 2)
                for width in (int(w) for w in widths.split(","))}
    table = Table("series", "requests", "steps", "e2e p50 ms", "e2e p95 ms",
                  "work p50 ms", "added per step p50 ms", "added per step p95 ms",
                  title="runtime overhead (end to end minus the critical path of the work)")
    for name, rows in [("mixed 0-3 turns x 1-4 calls", mixed),
                       *[(f"1 turn x {w} parallel calls", r) for w, r in fans.items()]]:
        per_step = [r["overhead_per_step"] for r in rows]
        table.add_row(name, str(len(rows)), str(int(sum(r["step_count"] for r in rows))),
                      f"{pct([r['e2e'] for r in rows], 0.5):.0f}",
                      f"{pct([r['e2e'] for r in rows], 0.95):.0f}",
                      f"{pct([r['work'] for r in rows], 0.5):.0f}",
                      f"{pct(per_step, 0.5):.1f}", f"{pct(per_step, 0.95):.1f}")
    console.print(table)
    steps = sum(r["step_count"] for r in mixed)
    console.print(f"mixed series: {steps} steps in {wall:.1f} s = {steps / wall:.1f} steps/s; "
                  f"median added per sequential step "
                  f"{statistics.median(r['overhead_per_step'] for r in mixed):.1f} ms")


if __name__ == "__main__":
    typer.run(main)
