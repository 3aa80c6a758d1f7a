"""Prompt-output and tool-result caches: a stored result, reused while fresh.

Both keep the output with what producing it cost, so a hit reports the tokens and USD it
saved. The keys come from ``clawstream.processors.keys`` (defined once); what differs
between the two layers is only which steps may be cached and for how long.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from clawstream.config import Settings
from clawstream.processors.caching.control import CacheControl
from clawstream.processors.caching.report import current
from clawstream.processors.caching.store import CacheStore
from clawstream.processors.keys import prompt_cache_key, tool_cache_key
from clawstream.schemas.records import ModelCall


@dataclass(frozen=True)
class CachedResult:
    output: str
    stored_at_ms: int
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    model: str | None = None
    backend: str | None = None
    tool_calls_json: str = "[]"
    """A model's calls of tools, when that was its answer."""

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def _entry(raw: Any) -> CachedResult | None:
    """A stored entry, or None if absent or written by an incompatible version."""
    try:
        return CachedResult(**raw) if isinstance(raw, dict) else None
    except TypeError:
        return None


class ResultCache:
    """A layer of whole step results under one key each, with TTL and maximum age."""

    layer = "result"

    def __init__(self, store: CacheStore, settings: Settings,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def lookup(self, key: str, control: CacheControl) -> CachedResult | None:
        """The stored result if present and young enough for ``control``; counts hit/miss."""
        entry = _entry(await self.store.get(self.layer, key))
        if entry is not None and control.max_age_s is not None and (
                self.now_ms() - entry.stored_at_ms > control.max_age_s * 1000):
            entry = None
        report = current()
        if entry is None:
            report.miss(self.layer)
        else:
            report.hit(self.layer, entry.tokens, entry.cost_usd)
        return entry

    async def save(self, key: str, entry: CachedResult, ttl_s: float) -> None:
        if ttl_s > 0:
            await self.store.put(self.layer, key, asdict(entry), ttl_s)


class PromptCache(ResultCache):
    """Model outputs, for steps deterministic enough to repeat (low temperature)."""

    layer = "prompt"

    def eligible(self, call: ModelCall, control: CacheControl) -> bool:
        threshold = self.settings.prompt_cache_max_temperature
        return control.enabled and call["temperature"] <= threshold

    def key(self, call: ModelCall, model_id: str) -> str:
        params = {"pool": call["model"], "max_tokens": call["max_tokens"],
                  "temperature": float(call["temperature"]), "tools": call["tools"],
                  "tool_choice": call["tool_choice"]}
        # The client's sampling only where set: calls that set none keep their keys.
        sampling = {"top_p": call.get("top_p"), "stop": call.get("stop") or None,
                    "seed": call.get("seed")}
        params.update({k: v for k, v in sampling.items() if v is not None})
        messages = [{"role": m["role"], "content": m["content"]} for m in call["messages"]]
        return prompt_cache_key(call["prompt_version"], model_id, params, messages)

    def ttl(self, control: CacheControl) -> float:
        return control.ttl_s if control.ttl_s is not None else self.settings.prompt_cache_ttl_s


class CacheableTool(Protocol):
    """What the tool cache reads from a tool's declaration (``ToolSpec``)."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def mutating(self) -> bool: ...
    @property
    def cache_ttl_s(self) -> float | None: ...
    @property
    def cache_params(self) -> tuple[str, ...] | None: ...


class ToolResultCache(ResultCache):
    """Outputs of read-only tools, keyed by the arguments the tool declares critical."""

    layer = "tool"

    def ttl(self, tool: CacheableTool) -> float:
        default = self.settings.tool_cache_ttl_s
        ttl = tool.cache_ttl_s if tool.cache_ttl_s is not None else default
        return min(ttl, self.settings.tool_cache_max_ttl_s)

    def eligible(self, tool: CacheableTool, control: CacheControl) -> bool:
        """Never a mutating tool: a hit would skip a side effect the caller asked for."""
        return control.enabled and not tool.mutating and self.ttl(tool) > 0

    def key(self, tool: CacheableTool, arguments: Mapping[str, Any]) -> str:
        names = tool.cache_params if tool.cache_params is not None else sorted(arguments)
        critical = {n: arguments.get(n) for n in names}
        return tool_cache_key(tool.name, tool.version, critical)
