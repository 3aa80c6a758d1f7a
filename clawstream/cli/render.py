"""Rich rendering of answers and their step timelines, shared by ask, tail and demo."""

from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table

from clawstream.schemas.records import AgentAnswer, AgentEvent


def timeline_table(answer: AgentAnswer) -> Table:
    table = Table(title=f"request {answer['request_id'][:8]} · {answer['status']}",
                  title_justify="left")
    for col in ("step", "name", "worker", "queue wait ms", "run ms", "result wait ms",
                "attempt", "cache", "status"):
        table.add_column(col, justify="right" if "ms" in col else "left")
    for e in answer["timeline"]:
        table.add_row(e["step_type"], e["name"], e["worker"], f"{e['queue_wait_ms']:.0f}",
                      f"{e['run_ms']:.0f}", f"{e['result_wait_ms']:.0f}", str(e["attempt"]),
                      "hit" if e["cache_hit"] else "miss", e["status"])
    return table


def print_answer(console: Console, answer: AgentAnswer) -> None:
    total = answer["answered_at_ms"] - answer["created_at_ms"]
    usage = answer["usage"]
    console.print(f"[bold]{answer['agent']}[/] ({answer['status']}, {total} ms, "
                  f"{usage['prompt_tokens']}+{usage['completion_tokens']} tokens, "
                  f"${usage['cost_usd']:.6f}, caches saved ${usage['saved_cost_usd']:.6f}): "
                  f"{answer['text'] or answer.get('reason') or ''}")
    console.print(timeline_table(answer))


def decisions_table(events: list[AgentEvent]) -> Table:
    """The model's choices, in order: final text, or which tools with what arguments."""
    table = Table("turn", "decision", "tools called", "arguments", title="decisions",
                  title_justify="left")
    for e in events:
        detail = e["detail"]
        calls = json.loads(detail.get("calls") or "[]")
        table.add_row(detail.get("turn", ""), detail.get("kind", ""),
                      detail.get("tools", "") or "-",
                      "; ".join(f"{c['name']}({c['arguments']})" for c in calls) or "-")
    return table
