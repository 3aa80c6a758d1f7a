"""``just bench eval``: a regression set of 50 scenarios through the real event flow.

With the SCRIPTED model fixture (deterministic answers, so the figures are the runtime's:
scenarios per minute, and the prompt tokens each context setting costs), the same set runs
once per ``context_exchanges`` setting (2, 4, 6, 8). Each scenario is a conversation of
``turns`` turns whose last turn calls a tool, so the later prompts carry the earlier
exchanges and the token cost of keeping more context shows. With ``--local N`` it also runs
N scenarios of a recall question on the local model (slow: ~19 tokens/s on 2 cores), where
quality, not only tokens, depends on the context kept.
"""

from __future__ import annotations

import time
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from benchmarks.common import bench_stack, console

ENV = {"CLAWSTREAM_FAULT_INJECTION": "true",
       "CLAWSTREAM_AGENT_MODULES": "fixtures.faults,fixtures.team_agents",
       "CLAWSTREAM_EVAL_CONCURRENCY": "8",
       "CLAWSTREAM_TENANT_RATE_PER_S": "10000", "CLAWSTREAM_TENANT_BURST": "10000",
       "CLAWSTREAM_USER_RATE_PER_S": "10000", "CLAWSTREAM_USER_BURST": "10000",
       # The same prompts run once per context setting (6 and 8 keep the same five earlier
       # exchanges): with the caches on, later settings are answered from the prompt cache
       # and their tokens, latency and rate measure the cache, not the model.
       "CLAWSTREAM_CACHE_ENABLED": "false"}


def scripted_set(scenarios: int, turns: int) -> Any:
    from clawstream.cli.eval_set import EvalSet

    def scenario(i: int) -> dict[str, Any]:
        chat = [{"user": f"fact {t} of case {i}: the code is {i * 100 + t}",
                 "script": [{"text": f"Noted code {i * 100 + t}."}],
                 "expect": {"contains": f"{i * 100 + t}"}} for t in range(turns - 1)]
        last = {"user": f"shout the codes of case {i}",
                "script": [{"tool_calls": [{"name": "shout",
                                            "arguments": {"text": f"case {i}"}}]},
                           {"text": f"CASE {i} done"}],
                "expect": {"contains": f"CASE {i}", "tool_called": "shout",
                           "max_steps": 3}}
        return {"name": f"case {i}", "turns": [*chat, last]}

    return EvalSet.model_validate({"agent": "team-helpdesk",
                                   "scenarios": [scenario(i) for i in range(scenarios)]})


def local_set(scenarios: int) -> Any:
    from clawstream.cli.eval_set import EvalSet

    names = ["Alice", "Bruno", "Chen", "Dara", "Emeka", "Farah", "Goran", "Hana"]

    def scenario(i: int) -> dict[str, Any]:
        name = names[i % len(names)]
        filler = [{"user": f"Tell me one word about the number {n}.",
                   "expect": {"status": ["ok", "degraded"]}} for n in range(4)]
        return {"name": f"recall {i}", "turns": [
            {"user": f"My name is {name}. Just say OK.",
             "expect": {"status": ["ok", "degraded"]}}, *filler,
            {"user": "What is my name? Answer with the name only.",
             "expect": {"contains": name}}]}

    return EvalSet.model_validate({"agent": "chat",
                                   "scenarios": [scenario(i) for i in range(scenarios)]})


def main(scenarios: int = 50, turns: int = 6, contexts: str = "2,4,6,8", local: int = 0,
         keep_stack: bool = False) -> None:
    from clawstream.cli.eval_run import Runner

    settings_list = [int(c) for c in contexts.split(",")]
    rows = []
    # The local scenarios need the real model (bench_stack defaults to the simulated one);
    # the scripted fixture answers its marked requests on either backend.
    env = {**ENV, "CLAWSTREAM_INFERENCE_BACKEND": "llama_cpp"} if local else ENV
    with bench_stack(env=env, keep=keep_stack) as settings:
        runner = Runner(settings)
        console.print(f"[bold]bench eval[/]: {scenarios} scripted scenarios of {turns} turns, "
                      f"context {contexts}; eval concurrency {settings.eval_concurrency}; "
                      f"backend {settings.inference_backend}, {local} local scenario(s)")
        for label, eval_set in [("scripted", scripted_set(scenarios, turns)),
                                *([("local", local_set(local))] if local else [])]:
            for context in settings_list:
                began = time.monotonic()
                report = runner.run(eval_set, eval_set.agent, f"bench:{label}", None, context)
                rows.append((label, context, report, time.monotonic() - began))
    table = Table("model", "context exchanges", "scenarios", "pass rate",
                  "tokens / scenario", "USD", "p50 turn ms", "scenarios / min",
                  title="eval: quality and tokens per context setting")
    for label, context, report, _wall in rows:
        table.add_row(label, str(context), str(len(report.scenarios)),
                      f"{report.pass_rate:.0%}",
                      f"{report.tokens / max(1, len(report.scenarios)):.0f}",
                      f"{report.cost_usd:.6f}", f"{report.p50_latency_ms:.0f}",
                      f"{report.scenarios_per_minute:.1f}")
    Console(width=140).print(table)  # a pipe's 80 columns would cut the figures
    for label, context, report, _wall in rows:
        failed = [s for s in report.scenarios if not s.passed][:3]
        for s in failed:
            answer = s.turns[-1].text.replace("\n", " ")[:100] if s.turns else ""
            console.print(f"{label} context {context}: {s.name}: {s.reason}; answered "
                          f"{answer!r}", width=200)


if __name__ == "__main__":
    typer.run(main)
