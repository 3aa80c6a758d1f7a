"""Retrieval over the small document set the project ships, using the embedding deployment.

Document vectors live in Redis under the embedding-cache key (model id + hash of the
whitespace-normalised text), so a restarted executor does not re-embed the corpus.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from inference.client import InferenceClient
from processors.tools.base import ToolContext, ToolSpec

CORPUS_DIR = Path(__file__).parent / "corpus"


@dataclass(frozen=True)
class Document:
    name: str
    text: str


def load_corpus(directory: Path = CORPUS_DIR) -> list[Document]:
    return [Document(p.stem, p.read_text().strip()) for p in sorted(directory.glob("*.md"))]


def embedding_cache_key(model_id: str, text: str) -> str:
    normalised = " ".join(text.split())
    return f"emb:{model_id}:{hashlib.sha256(normalised.encode()).hexdigest()}"


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


class Retriever:
    """Top-k documents by cosine similarity of MiniLM embeddings."""

    spec = ToolSpec(name="retrieve", version="1")

    def __init__(self, inference: InferenceClient, cache: aioredis.Redis) -> None:
        self._inference = inference
        self._cache = cache
        self._docs = load_corpus()

    async def _doc_vectors(self) -> list[list[float]]:
        health = await self._inference.health()
        model_id = health.embedding.model if health.embedding else "unknown"
        keys = [embedding_cache_key(model_id, d.text) for d in self._docs]
        cached = await self._cache.mget(keys)
        missing = [i for i, v in enumerate(cached) if v is None]
        vectors: list[list[float] | None] = [json.loads(v) if v else None for v in cached]
        if missing:
            fresh = await self._inference.embed([self._docs[i].text for i in missing])
            async with self._cache.pipeline(transaction=False) as pipe:
                for i, vec in zip(missing, fresh, strict=True):
                    vectors[i] = vec
                    pipe.set(keys[i], json.dumps(vec))
                await pipe.execute()
        return [v for v in vectors if v is not None]

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        query = str(arguments.get("query", "")).strip()
        k = int(str(arguments.get("k", 2)))
        if not query:
            raise ValueError("retrieve needs a non-empty 'query'")
        doc_vectors = await self._doc_vectors()
        [query_vector] = await self._inference.embed([query])
        scored = sorted(
            ((_cosine(query_vector, v), d) for v, d in zip(doc_vectors, self._docs, strict=True)),
            key=lambda pair: pair[0], reverse=True,
        )
        return json.dumps([{"doc": d.name, "score": round(s, 4), "text": d.text}
                           for s, d in scored[:k]])
