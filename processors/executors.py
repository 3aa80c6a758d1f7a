"""The inference dispatcher and the tool executor: they turn step commands into results.

Workers never retry or sleep on a failure: they report it (with the backend's Retry-After)
and the coordinator schedules the next attempt, so a failing step holds no partition.

Both fetch through :mod:`clawstream.processors.flow.dispatch`: lanes (interactive first), tenants in
turn, the tokens/s limiter per model pool for model steps, and paused partitions while a
downstream reports overload (Serve's 503 + Retry-After): no new step is fetched until then.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, cast

import faust
from redis.exceptions import RedisError

from clawstream.config import Settings
from clawstream.inference.client import (
    GenerationResult,
    InferenceClient,
    InferenceError,
    InferenceOverloaded,
    InferenceUnreachable,
)
from clawstream.inference.protocol import ToolChoice
from clawstream.processors.app import WorkerTopics
from clawstream.processors.caching import CacheControl, Caches, collecting
from clawstream.processors.caching.report import current as cache_report
from clawstream.processors.deltas import StepDeltas
from clawstream.processors.emit import Emitter, now_ms
from clawstream.processors.flow.acks import OrderedAcks
from clawstream.processors.flow.dispatch import Dispatcher, Unlimited
from clawstream.processors.flow.flags import FlagView
from clawstream.processors.flow.limiter import PoolAdmission
from clawstream.processors.flow.pools import estimate_tokens, smallest_pool
from clawstream.processors.flow.scheduler import LaneScheduler, Pending
from clawstream.processors.ledger import EffectLedger
from clawstream.processors.observe import observe_step
from clawstream.processors.records import Output
from clawstream.processors.tools.base import Tool, ToolContext, ToolError
from clawstream.schemas import DecodeError, decode_as
from clawstream.schemas.names import STEP_COMMAND, STEP_RESULT
from clawstream.schemas.records import (
    FunctionCall,
    ModelCall,
    StepCommand,
    StepError,
    StepResult,
    Usage,
    empty_usage,
)
from clawstream.streams.topics import RESULTS

log = logging.getLogger(__name__)


class InFlight:
    """Steps being run by this worker, so SIGTERM can wait for them (see lifecycle.py)."""

    def __init__(self) -> None:
        self.count = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def __enter__(self) -> None:
        self.count += 1
        self.idle.clear()

    def __exit__(self, *exc: object) -> None:
        self.count -= 1
        if self.count == 0:
            self.idle.set()


def chat_messages(call: ModelCall) -> list[dict[str, object]]:
    """The step's messages as the inference API takes them (OpenAI's shape)."""
    return [{"role": m["role"], "content": m["content"],
             "tool_calls": [{"id": c["id"], "name": c["name"], "arguments": c["arguments_json"]}
                            for c in m["tool_calls"]] or None,
             "tool_call_id": m["tool_call_id"], "name": m["name"]}
            for m in call["messages"]]


def tool_functions(call: ModelCall) -> list[dict[str, object]]:
    return [{"name": t["name"], "description": t["description"],
             "parameters": json.loads(t["parameters_json"] or "{}")} for t in call["tools"]]


def tool_choice(call: ModelCall) -> ToolChoice:
    if call["tool_choice"] == "none":
        return "none"
    if call["tool_choice"] == "required":
        return "required"
    return "auto"


class StepBusy(Exception):
    """Another execution of this mutating step holds its ledger claim right now."""

    def __init__(self, step_id: str, retry_after_s: float) -> None:
        super().__init__(f"step {step_id} is being applied by another execution")
        self.retry_after_s = retry_after_s


INFRASTRUCTURE = (InferenceOverloaded, InferenceUnreachable, RedisError, ConnectionError,
                  StepBusy)
"""Failures of our own parts, not of the tool or model: retried until the deadline, without
using the step's attempts (see ``conversation._step_failed``)."""


def _error(exc: BaseException, retryable: bool, retry_after_s: float | None = None
           ) -> StepError:
    infrastructure = isinstance(exc, INFRASTRUCTURE)
    return {"error_class": type(exc).__name__, "message": str(exc)[:500] or repr(exc),
            "retryable": retryable or infrastructure, "infrastructure": infrastructure,
            "retry_after_ms": None if retry_after_s is None else int(retry_after_s * 1000)}


class StepExecutors:
    """The inference dispatcher and the tool executor of one worker, with their clients."""

    def __init__(self, *, worker_name: str, settings: Settings, emitter: Emitter,
                 inference: InferenceClient, caches: Caches, ledger: EffectLedger,
                 tools: dict[str, Tool], admission: PoolAdmission,
                 flags: Callable[[], FlagView]) -> None:
        self.worker_name = worker_name
        self.settings = settings
        self.emitter = emitter
        self.inference = inference
        self.caches = caches
        self.ledger = ledger
        self.tools = tools
        self.flags = flags
        self.in_flight = InFlight()
        self.acks = OrderedAcks()
        self.model_dispatcher = Dispatcher(
            "inference", LaneScheduler(settings.dispatch_buffer_per_lane), admission,
            self._run_model_item, self._finish, settings.dispatch_concurrency,
            reserved=settings.dispatch_interactive_reserved)
        # Tool commands of both lanes share one topic: a larger buffer, so a batch burst
        # rarely blocks the stream an interactive tool step arrives on.
        self.tool_dispatcher = Dispatcher(
            "tools", LaneScheduler(settings.dispatch_buffer_per_lane * 4), Unlimited(),
            self._run_tool_item, self._finish, settings.tool_concurrency,
            reserved=settings.dispatch_interactive_reserved)

    def install(self, app: faust.App, topics: WorkerTopics, *, tools: bool = True,
                inference: bool = True) -> None:
        """Register the fetching agents of the model steps (``inference``) and of the tool
        steps (``tools``), and the dispatch loops, on ``app``."""

        async def dispatch_inference(stream: faust.StreamT) -> None:
            await self._intake(stream, self.model_dispatcher, self._model_item)

        async def dispatch_inference_batch(stream: faust.StreamT) -> None:
            await self._intake(stream, self.model_dispatcher, self._model_item)

        async def execute_tools(stream: faust.StreamT) -> None:
            await self._intake(stream, self.tool_dispatcher, Pending)

        if inference:
            app.agent(topics.inference_interactive,
                      name="clawstream.dispatch_inference")(dispatch_inference)
            app.agent(topics.inference_batch,
                      name="clawstream.dispatch_inference_batch")(dispatch_inference_batch)
        if tools:
            app.agent(topics.tools, name="clawstream.execute_tools")(execute_tools)
        if tools or inference:
            app.task(self.run_dispatchers)

    async def run_dispatchers(self) -> None:
        await asyncio.gather(self.model_dispatcher.run_forever(),
                             self.tool_dispatcher.run_forever())

    def _result(self, cmd: StepCommand, started: int, *, output: str = "",
                error: StepError | None = None, model: str | None = None,
                backend: str | None = None, usage: Usage | None = None,
                cache_hit: bool = False, tool_calls: list[FunctionCall] | None = None,
                finish_reason: str | None = None) -> Output:
        record: StepResult = {
            "step_id": cmd["step_id"],
            "step_index": cmd["step_index"],
            "step_type": cmd["step_type"],
            "attempt": cmd["attempt"],
            "request_id": cmd["request_id"],
            "conversation_id": cmd["conversation_id"],
            "trace_id": cmd["trace_id"],
            "status": "error" if error else "ok",
            "output": output,
            "error": error,
            "worker": self.worker_name,
            "issued_at_ms": cmd["issued_at_ms"],
            "started_at_ms": started,
            "finished_at_ms": now_ms(),
            "cache_hit": cache_hit,
            "model": model,
            "backend": backend,
            "usage": usage or empty_usage(),
            "cache": cache_report().records(),
            "tool_calls": tool_calls or [],
            "finish_reason": finish_reason,
            "answer": None,
            "effects": [],
        }
        return Output(RESULTS.name, cmd["conversation_id"], STEP_RESULT, record)

    async def run_model_step(self, cmd: StepCommand, pool: str | None = None) -> Output:
        started = now_ms()
        call = cmd["model_call"]
        if call is None:
            return self._result(cmd, started, error=_error(
                ValueError("a model step command without a model call"), False))
        spec = self.settings.pools.get(pool or call["model"])

        async def generate() -> GenerationResult:
            deltas = (StepDeltas(self.emitter, cmd, self.settings.stream_delta_flush_ms)
                      if call.get("stream") else None)
            result = await self.inference.generate(
                chat_messages(call), max_tokens=call["max_tokens"],
                temperature=call["temperature"], model=spec.backend_model if spec else None,
                tools=tool_functions(call), tool_choice=tool_choice(call),
                on_delta=deltas.text if deltas else None, top_p=call.get("top_p"),
                stop=call.get("stop") or (), seed=call.get("seed"))
            if deltas is not None:
                await deltas.finish(result)
            return result

        try:
            outcome = await self.caches.model_step(
                call, CacheControl.from_record(cmd.get("cache")), cache_report(),
                lambda: asyncio.wait_for(generate(), timeout=cmd["timeout_ms"] / 1000),
                served_model=spec.backend_model if spec else None)
        except TimeoutError:
            return self._result(cmd, started, error=_error(
                TimeoutError(f"model call exceeded its {cmd['timeout_ms']} ms limit"), True))
        except InferenceError as exc:
            retry_after = exc.retry_after if isinstance(exc, InferenceOverloaded) else None
            if isinstance(exc, InferenceOverloaded):  # backpressure: stop fetching meanwhile
                self.model_dispatcher.hold(retry_after or self.settings.inference_retry_after_s)
            return self._result(cmd, started,
                                error=_error(exc, exc.retryable, retry_after))
        return self._result(cmd, started, output=outcome.output, model=outcome.model,
                            backend=outcome.backend, usage=outcome.usage,
                            cache_hit=outcome.cache_hit, tool_calls=outcome.tool_calls,
                            finish_reason=outcome.finish_reason)

    async def _call_tool(self, tool: Tool, ctx: ToolContext) -> str:
        """Mutating calls go through the ledger. The hard cut comes one limit after the
        coordinator's budget, so the coordinator gives the attempt up first and the cut only
        frees this worker's slot from a tool that ignores its limit."""
        arguments = json.loads(ctx.arguments_json)
        hard_cut_s = ctx.timeout_s * (self.settings.step_budget_factor + 1)
        if not tool.spec.mutating:
            return await asyncio.wait_for(tool.run(arguments, ctx), hard_cut_s)
        token = f"{self.worker_name}:{ctx.attempt}:{uuid.uuid4().hex}"
        lease_s = self.settings.ledger_lease_s
        claim = await self.ledger.claim(ctx.step_id, token, lease_s)
        if claim.state == "done":
            log.info("step %s already applied: returning the ledger's result", ctx.step_id)
            return claim.output or ""
        if claim.state == "busy":
            raise StepBusy(ctx.step_id, claim.retry_after_s)
        try:
            async with self.ledger.holding(ctx.step_id, token, lease_s):
                output = await asyncio.wait_for(tool.run(arguments, ctx), hard_cut_s)
        except BaseException:
            await self.ledger.release(ctx.step_id, token)
            raise
        await self.ledger.record(ctx.step_id, token, output, self.worker_name, now_ms())
        return output

    async def run_tool_step(self, cmd: StepCommand) -> Output:
        started = now_ms()
        call = cmd["tool_call"]
        if call is None:
            return self._result(cmd, started, error=_error(
                ValueError("a tool step command without a tool call"), False))
        tool = self.tools.get(call["name"])
        if tool is None:
            return self._result(cmd, started,
                                error=_error(LookupError(f"unknown tool {call['name']!r}"),
                                             False))
        if self.flags().tool_killed(call["name"]):
            return self._result(cmd, started, error=_error(
                RuntimeError(f"tool {call['name']} is switched off (kill switch)"), False))
        ctx = ToolContext(step_id=cmd["step_id"], attempt=cmd["attempt"],
                          timeout_s=cmd["timeout_ms"] / 1000,
                          arguments_json=call["arguments_json"])
        try:
            outcome = await self.caches.tool_step(
                tool.spec, json.loads(call["arguments_json"]),
                CacheControl.from_record(cmd.get("cache")), cache_report(),
                lambda: self._call_tool(tool, ctx))
        except ToolError as exc:
            return self._result(cmd, started,
                                error=_error(exc, exc.retryable, exc.retry_after_s))
        except StepBusy as exc:
            return self._result(cmd, started, error=_error(exc, True, exc.retry_after_s))
        except ValueError as exc:
            return self._result(cmd, started, error=_error(exc, False))
        except (InferenceError, RedisError, ConnectionError, TimeoutError) as exc:
            retryable = not isinstance(exc, InferenceError) or exc.retryable
            return self._result(cmd, started, error=_error(exc, retryable))
        return self._result(cmd, started, output=outcome.output, usage=outcome.usage,
                            cache_hit=outcome.cache_hit)

    async def _finish(self, item: Pending, output: Output | Exception) -> None:
        if isinstance(output, Exception):
            log.error("dead-lettering step %s: %r", item.cmd["step_id"], output)
            await self.emitter.dead_letter(item.event, f"processing failed: {output!r}",
                                           type(output).__name__, item.cmd)
        else:
            if output.schema == STEP_RESULT:
                observe_step(item.cmd, item.pool, cast(StepResult, output.record))
            await self.emitter.send(output)
        self.acks.done(item.event)

    def _model_item(self, cmd: StepCommand, event: Any) -> Pending:
        call = cmd["model_call"]
        if call is None:  # run_model_step answers it with a validation error
            return Pending(cmd, event, pool=next(iter(self.settings.pools)))
        pool = call["model"] if call["model"] in self.settings.pools else (
            smallest_pool(self.settings, self.flags()) or next(iter(self.settings.pools)))
        return Pending(cmd, event, cost=estimate_tokens(call["messages"], call["max_tokens"]),
                       pool=pool)

    async def _cached(self, cmd: StepCommand, step: Awaitable[Output]) -> Output:
        """Run one step under a fresh cache report (its result carries what the caches
        did); a cache outage is a miss for the step and an audit event for the operator."""
        with self.in_flight, collecting() as report:
            result = await step
        for output in self.caches.outage_events(cmd, report, self.worker_name, now_ms()):
            await self.emitter.send(output)
        return result

    async def _run_model_item(self, item: Pending) -> Output:
        return await self._cached(item.cmd, self.run_model_step(item.cmd, item.pool))

    async def _run_tool_item(self, item: Pending) -> Output:
        return await self._cached(item.cmd, self.run_tool_step(item.cmd))

    async def _intake(self, stream: Any, dispatcher: Dispatcher,
                      make: Callable[[StepCommand, Any], Pending]) -> None:
        """Fetch only: decode and hand over; offsets are acked when the step's result is
        sent."""
        async for event in stream.noack().events():
            self.acks.track(event)
            try:
                cmd = decode_as(STEP_COMMAND, event.value)
            except DecodeError as exc:
                await self.emitter.dead_letter(event, str(exc), "DecodeError")
                self.acks.done(event)
                continue
            await dispatcher.submit(make(cmd, event))

    async def drain(self, timeout_s: float) -> bool:
        """Admit nothing more, then wait for the steps in flight; True if they all finished.
        Buffered steps stay unacked and go to the partitions' next owner."""
        for dispatcher in (self.model_dispatcher, self.tool_dispatcher):
            dispatcher.hold(timeout_s + 60)
        log.info("draining %d in-flight step(s), up to %.0f s", self.in_flight.count,
                 timeout_s)
        try:
            await asyncio.wait_for(self.in_flight.idle.wait(), timeout_s)
        except TimeoutError:
            log.warning("drain timed out with %d step(s) in flight", self.in_flight.count)
            return False
        return True
