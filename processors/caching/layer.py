"""The three caches in front of the model and the tools, as the workers use them.

``Caches.model_step`` and ``Caches.tool_step`` wrap the real call: look up, call on a miss,
store, and price the outcome (tokens and USD spent, or saved by a hit), so the dispatcher
and the tool executor stay free of cache logic. ``cache_enabled=false`` turns every layer
off (the benchmark's baseline run).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from clawstream.config import Settings
from clawstream.inference.client import GenerationResult, InferenceClient
from clawstream.processors.caching.control import CacheControl
from clawstream.processors.caching.embeddings import EmbeddingCache, ModelIds
from clawstream.processors.caching.report import CacheReport
from clawstream.processors.caching.results import (
    CacheableTool,
    CachedResult,
    PromptCache,
    ToolResultCache,
)
from clawstream.processors.caching.store import CacheStore
from clawstream.processors.pricing import cost_usd
from clawstream.processors.records import Output, Subject, event
from clawstream.schemas.records import FunctionCall, ModelCall, StepCommand, Usage


@dataclass
class StepOutcome:
    """What a step produced, priced; ``usage`` is an Avro ``Usage`` record."""

    output: str
    cache_hit: bool
    usage: Usage
    model: str | None = None
    backend: str | None = None
    tool_calls: list[FunctionCall] = field(default_factory=list)
    finish_reason: str | None = None


def usage_record(report: CacheReport, prompt_tokens: int = 0, completion_tokens: int = 0,
                 cost: float = 0.0) -> Usage:
    """Tokens and USD billed by this step, plus everything its cache hits saved."""
    layers = report.layers.values()
    return {"prompt_tokens": prompt_tokens + sum(s.spent_tokens for s in layers),
            "completion_tokens": completion_tokens,
            "cost_usd": cost + sum(s.spent_cost_usd for s in layers),
            "saved_tokens": sum(s.saved_tokens for s in layers),
            "saved_cost_usd": sum(s.saved_cost_usd for s in layers)}


class Caches:
    def __init__(self, settings: Settings, inference: InferenceClient,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.enabled = settings.cache_enabled
        self.store = CacheStore(settings.redis_url, settings.cache_timeout_s)
        self.models = ModelIds(inference)
        self.prompt = PromptCache(self.store, settings, clock)
        self.tools = ToolResultCache(self.store, settings, clock)
        self.embeddings = EmbeddingCache(self.store if self.enabled else None, inference,
                                         self.models, settings.prices,
                                         settings.embedding_cache_ttl_s)
        self._last_outage_event: dict[str, float] = {}

    async def model_step(self, call: ModelCall, control: CacheControl,
                         report: CacheReport,
                         generate: Callable[[], Awaitable[GenerationResult]],
                         served_model: str | None = None) -> StepOutcome:
        """The prompt-output cache around one generation (raises what ``generate`` raises).
        ``served_model``: the backend model the call's pool names, when it names one."""
        use_cache = self.enabled and self.prompt.eligible(call, control)
        if use_cache:
            model_id = served_model or await self.models.get("generation")
            hit = await self.prompt.lookup(self.prompt.key(call, model_id), control)
            if hit is not None:
                return StepOutcome(hit.output, True, usage_record(report), hit.model,
                                   hit.backend, json.loads(hit.tool_calls_json),
                                   "tool_calls" if hit.tool_calls_json != "[]" else "stop")
        gen = await generate()
        calls: list[FunctionCall] = [{"id": c.id, "name": c.name, "arguments_json": c.arguments}
                                     for c in gen.tool_calls]
        self.models.note("generation", gen.model)
        cost = cost_usd(self.settings.prices, gen.model, gen.prompt_tokens,
                        gen.completion_tokens)
        if use_cache:
            entry = CachedResult(gen.text, self.prompt.now_ms(), gen.prompt_tokens,
                                 gen.completion_tokens, cost, gen.model, gen.backend,
                                 json.dumps(calls))
            await self.prompt.save(self.prompt.key(call, gen.model), entry,
                                   self.prompt.ttl(control))
        return StepOutcome(gen.text, False, usage_record(report, gen.prompt_tokens,
                                                         gen.completion_tokens, cost),
                           gen.model, gen.backend, calls, gen.finish_reason)

    async def tool_step(self, tool: CacheableTool, arguments: Mapping[str, Any],
                        control: CacheControl, report: CacheReport,
                        run: Callable[[], Awaitable[str]]) -> StepOutcome:
        """The tool-result cache around one call; mutating tools always run."""
        use_cache = self.enabled and self.tools.eligible(tool, control)
        key = self.tools.key(tool, arguments) if use_cache else ""
        if use_cache:
            hit = await self.tools.lookup(key, control)
            if hit is not None:
                return StepOutcome(hit.output, True, usage_record(report))
        output = await run()
        usage = usage_record(report)
        if use_cache:
            entry = CachedResult(output, self.tools.now_ms(), usage["prompt_tokens"], 0,
                                 usage["cost_usd"])
            await self.tools.save(key, entry, self.tools.ttl(tool))
        return StepOutcome(output, False, usage)

    def outage_events(self, cmd: StepCommand, report: CacheReport, worker: str,
                      now_ms: int) -> list[Output]:
        """``cache_unavailable`` audit events for the layers that failed in this step, at
        most one per layer per ``cache_outage_event_interval_s`` (an outage is not a flood)."""
        events = []
        interval_ms = self.settings.cache_outage_event_interval_s * 1000
        for fault in report.faults:
            last = self._last_outage_event.get(fault.layer)
            if last is not None and now_ms - last < interval_ms:
                continue
            self._last_outage_event[fault.layer] = now_ms
            subject: Subject = {"conversation_id": cmd["conversation_id"],
                                "request_id": cmd["request_id"], "trace_id": cmd["trace_id"],
                                "agent": None}
            events.append(event("cache_unavailable", now_ms, subject, step_id=cmd["step_id"],
                                worker=worker,
                                detail={"layer": fault.layer, "op": fault.op,
                                        "error": fault.error, "degraded_to": "miss"}))
        return events
