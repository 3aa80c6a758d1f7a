"""What a worker records in Prometheus, read off the records it already makes.

Why from the records: every answer, audit event, dead letter and step result already
carries its times, status, reason, usage and cost, so the metrics need no second
bookkeeping and cannot disagree with the topics. The coordinator's records pass through
:func:`observe_output` when they are sent (one dict lookup for the kinds we do not count);
the executors call :func:`observe_step` with the command a result answers, since only the
command knows its lane and tool; the coordinator calls :func:`observe_result_back` when a
result arrives. The metric objects themselves are defined in :mod:`clawstream.metrics`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from functools import lru_cache
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from clawstream import metrics
from clawstream.processors.records import Output
from clawstream.schemas.names import AGENT_ANSWER, AGENT_EVENT, DEAD_LETTER
from clawstream.schemas.records import (
    AgentAnswer,
    AgentEvent,
    DeadLetter,
    StepCommand,
    StepResult,
    Usage,
)
from clawstream.streams.topics import INFERENCE_REQUESTS, INFERENCE_REQUESTS_BATCH, TOOL_REQUESTS


@lru_cache(maxsize=4096)
def _child(metric: Any, *values: str) -> Any:
    """A metric's child for these label values, looked up once: prometheus-client's
    ``labels()`` validates and locks on every call, a third of the record path's cost.
    Label values are bounded (see :mod:`clawstream.metrics`), so the cache is too."""
    return metric.labels(*values)


def _answer(a: AgentAnswer) -> None:
    _child(metrics.ANSWERS, a["status"], a["reason_kind"] or "none").inc()
    kind = "request" if a["parent_request_id"] is None else "subagent"
    _child(metrics.REQUEST_LATENCY, kind, a["status"]).observe(
        max(0, a["answered_at_ms"] - a["created_at_ms"]) / 1000)
    if a["parent_request_id"] is None:  # a parent's usage includes its children's
        _bill(a["tenant_id"], a["usage"])


def _bill(tenant: str, usage: Usage) -> None:
    if usage["cost_usd"]:
        _child(metrics.TENANT_COST, tenant).inc(usage["cost_usd"])
    if usage["prompt_tokens"]:
        _child(metrics.TENANT_TOKENS, tenant, "in").inc(usage["prompt_tokens"])
    if usage["completion_tokens"]:
        _child(metrics.TENANT_TOKENS, tenant, "out").inc(usage["completion_tokens"])


def _event(e: AgentEvent) -> None:
    _child(metrics.EVENTS, e["event_type"]).inc()


def _dead_letter(d: DeadLetter) -> None:
    _child(metrics.DEAD_LETTERS, d["source_topic"], d["error_class"]).inc()


_BY_SCHEMA: dict[str, Callable[[Any], None]] = {
    AGENT_ANSWER: _answer, AGENT_EVENT: _event, DEAD_LETTER: _dead_letter}


def observe_output(output: Output) -> None:
    """Count an answer, an audit event or a dead letter as it is sent; others pass."""
    record = _BY_SCHEMA.get(output.schema)
    if record is not None:
        record(output.record)


def command_topic(cmd: StepCommand) -> str:
    """The topic a step command came on (commands do not carry it)."""
    if cmd["step_type"] == "tool":
        return TOOL_REQUESTS.name
    return INFERENCE_REQUESTS.name if cmd["lane"] == "interactive" else (
        INFERENCE_REQUESTS_BATCH.name)


def observe_step(cmd: StepCommand, pool: str | None, result: StepResult) -> None:
    """A finished step attempt: its wait in the queue, its run time, its tokens and cost.
    The name is the tool, or the model pool (the operator's unit, bounded by settings)."""
    call = cmd["tool_call"]
    name = call["name"] if call is not None else (pool or "unknown")
    _child(metrics.QUEUE_WAIT, command_topic(cmd), cmd["lane"]).observe(
        max(0, result["started_at_ms"] - result["issued_at_ms"]) / 1000)
    status = "cache_hit" if result["cache_hit"] else result["status"]
    _child(metrics.STEP_RUN, cmd["step_type"], name, status).observe(
        max(0, result["finished_at_ms"] - result["started_at_ms"]) / 1000)
    usage = result["usage"]
    if usage["cost_usd"]:
        _child(metrics.STEP_COST, name).inc(usage["cost_usd"])
    if call is None:
        if usage["prompt_tokens"]:
            _child(metrics.STEP_TOKENS, name, "in").inc(usage["prompt_tokens"])
        if usage["completion_tokens"]:
            _child(metrics.STEP_TOKENS, name, "out").inc(usage["completion_tokens"])


def observe_result_back(result: StepResult, now_ms: int) -> None:
    """A step result reached the coordinator: how long it travelled back."""
    _child(metrics.RESULT_BACK, result["step_type"]).observe(
        max(0, now_ms - result["finished_at_ms"]) / 1000)


Position = tuple[str, int, int, int | None]
"""(topic, partition, high watermark, committed offset or None)."""


class ConsumerLag(Collector):
    """``clawstream_consumer_lag{group,topic,partition}``, read at scrape time from the
    worker's consumer (so the hot path pays nothing): records between the group's committed
    offset and the end of each partition this worker owns."""

    def __init__(self, group: str, positions: Callable[[], Iterable[Position]]) -> None:
        self.group = group
        self.positions = positions

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(metrics.CONSUMER_LAG, "Records behind the end of the "
                                   "partition, by consumer group, topic and partition",
                                   labels=["group", "topic", "partition"])
        for topic, partition, high, committed in self.positions():
            family.add_metric([self.group, topic, str(partition)],
                              max(0, high - (committed or 0)))
        yield family

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())

