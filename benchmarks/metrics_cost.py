"""``just bench metrics_cost``: what recording the metrics costs the coordinator per record.

No stack: the record path is pure Python (prometheus-client's counters and histograms
behind a dict lookup), so it is timed in-process with realistic records, many times, and
reported per call. The send path of every record the workers emit pays
``observe_output`` (an answer, an event, or a pass for commands and results) and
``headers_for`` (its W3C ``traceparent``); an executor
pays ``observe_step`` once per step attempt; the coordinator ``observe_result_back`` once
per result; with an OTLP endpoint, the coordinator builds each answer's spans
(``answer_spans``; the export itself runs in the SDK's thread). Compare with the
coordinator's per-record time in ``bench e2e``.
"""

from __future__ import annotations

import timeit
from typing import Any

from opentelemetry.sdk.resources import Resource
from rich.console import Console
from rich.table import Table

from clawstream.processors.observe import (
    observe_output,
    observe_result_back,
    observe_step,
)
from clawstream.processors.otlp import answer_spans
from clawstream.processors.records import Output, answer, event
from clawstream.schemas.names import STEP_COMMAND, STEP_RESULT
from clawstream.schemas.records import empty_usage
from clawstream.streams.publisher import new_request
from clawstream.streams.tracecontext import headers_for

CALLS = 200_000


def main() -> None:
    req = new_request(agent="researcher", conversation_id="c", text="hi", tenant_id="t",
                      deadline_s=20)
    usage = {**empty_usage(), "cost_usd": 0.001, "prompt_tokens": 120,
             "completion_tokens": 30}
    active: Any = {"usage": usage, "timeline": [], "cache": []}
    an_answer = answer(req, "ok", "text", None, req["created_at_ms"] + 900, "v1", active)
    subject: Any = {"conversation_id": "c", "request_id": "r", "trace_id": "t", "agent": "a"}
    an_event = event("step_issued", 1, subject, step_id="s")
    a_command = Output("agent.inference.requests", "c", STEP_COMMAND, {})
    cmd: Any = {"step_type": "model", "lane": "interactive", "tool_call": None}
    result: Any = {"step_type": "model", "status": "ok", "cache_hit": False,
                   "issued_at_ms": 1000, "started_at_ms": 1004, "finished_at_ms": 1200,
                   "usage": usage}
    traced = {**result, "trace_id": req["trace_id"], "request_id": req["request_id"],
              "step_id": "model:c:abc", "attempt": 1}
    step: Any = {"step_id": "model:c:abc", "step_type": "model", "name": "small",
                 "status": "ok", "worker": "worker-0", "attempt": 1, "issued_at_ms": 1000,
                 "queue_wait_ms": 4.0, "run_ms": 196.0, "result_wait_ms": 10.0,
                 "cache_hit": False, "usage": usage, "request_id": None,
                 "conversation_id": None, "agent_status": None, "depth": 0}
    spanned: Any = {**an_answer.record, "timeline": [step, {**step, "attempt": 2}]}
    resource = Resource.create({"service.name": "clawstream-worker"})
    cases = {
        "observe_output(answer)": lambda: observe_output(an_answer),
        "observe_output(event)": lambda: observe_output(an_event),
        "observe_output(command: passes)": lambda: observe_output(a_command),
        "observe_step(model step)": lambda: observe_step(cmd, "small", result),
        "observe_result_back(result)": lambda: observe_result_back(result, 1210),
        "headers_for(step result): traceparent": lambda: headers_for(STEP_RESULT, traced),
        "answer_spans(answer, 2 steps): OTLP export": lambda: answer_spans(spanned, resource),
    }
    table = Table(title=f"metrics record path, {CALLS:,} calls each (best of 5)")
    table.add_column("call")
    table.add_column("µs per call", justify="right")
    for name, call in cases.items():
        best = min(timeit.repeat(call, number=CALLS, repeat=5))
        table.add_row(name, f"{best / CALLS * 1e6:.2f}")
    Console(width=100).print(table)


if __name__ == "__main__":
    main()
