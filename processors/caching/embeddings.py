"""Embedding cache: vectors by model id + hash of whitespace-normalised content.

Content-addressed, so an entry never goes stale: it has no TTL by default and is
recomputed only when the text's hash (or the model) changes. Many texts are looked up in
one MGET and the misses embedded in one call, so retrieval over a corpus costs one round
trip, not one per document.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from clawstream.inference.client import InferenceClient, InferenceError
from clawstream.processors.caching.report import current
from clawstream.processors.caching.store import CacheStore
from clawstream.processors.keys import embedding_cache_key
from clawstream.processors.pricing import PriceTable, cost_usd, estimate_tokens


class ModelIds:
    """The served model ids (cache keys include them), from the app's health, refreshed
    every ``refresh_s`` and corrected by every response that names its model."""

    def __init__(self, inference: InferenceClient, refresh_s: float = 30.0) -> None:
        self._inference = inference
        self._refresh_s = refresh_s
        self._ids: dict[str, str] = {}
        self._fetched = 0.0

    async def get(self, kind: str) -> str:
        """``kind`` is 'generation' or 'embedding'; the last known id (or 'unknown', which
        no stored entry uses) when the app cannot say: the call itself will tell."""
        if kind not in self._ids or time.monotonic() - self._fetched > self._refresh_s:
            try:
                health = await self._inference.health()
            except InferenceError:
                return self._ids.get(kind, "unknown")
            for name in ("generation", "embedding"):
                component = getattr(health, name)
                if component is not None:
                    self._ids[name] = component.model
            self._fetched = time.monotonic()
        return self._ids.get(kind, "unknown")

    def note(self, kind: str, model: str) -> None:
        self._ids[kind] = model


class EmbeddingCache:
    layer = "embedding"

    def __init__(self, store: CacheStore | None, inference: InferenceClient, models: ModelIds,
                 prices: PriceTable, ttl_s: float | None = None) -> None:
        self.store = store
        """None: caching off, every text is embedded (and billed) every time."""
        self.inference = inference
        self.models = models
        self.prices = prices
        self.ttl_s = ttl_s

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Vectors for ``texts`` in order; hits from Redis, the rest from the model."""
        report = current()
        model_id = await self.models.get("embedding")
        keys = [embedding_cache_key(model_id, t) for t in texts]
        cached = (await self.store.mget(self.layer, keys) if self.store is not None
                  else [None] * len(keys))
        vectors: dict[str, list[float]] = {k: v for k, v in zip(keys, cached, strict=True)
                                           if isinstance(v, list)}
        hits = [t for k, t in zip(keys, texts, strict=True) if k in vectors]
        missing = {k: t for k, t in zip(keys, texts, strict=True) if k not in vectors}
        if hits and self.store is not None:
            tokens = sum(estimate_tokens(t) for t in hits)
            report.hit(self.layer, tokens, cost_usd(self.prices, model_id, tokens), len(hits))
        if missing:
            if self.store is not None:
                report.miss(self.layer, len(missing))
            result = await self.inference.embed_result(list(missing.values()))
            tokens = sum(estimate_tokens(t) for t in missing.values())
            report.spend(self.layer, tokens, cost_usd(self.prices, result.model, tokens))
            fresh = dict(zip(missing, result.vectors, strict=True))
            vectors.update(fresh)
            if result.model != model_id:  # the app was redeployed with another model
                self.models.note("embedding", result.model)
                fresh = {embedding_cache_key(result.model, missing[k]): v
                         for k, v in fresh.items()}
            if self.store is not None:
                await self.store.put_many(self.layer, fresh, self.ttl_s)
        return [vectors[k] for k in keys]
