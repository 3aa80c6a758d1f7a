"""Retrieval over the small document set the project ships, using the embedding deployment.

Document and query vectors come through the embedding cache (model id + hash of the
whitespace-normalised text) in one batch, so a restarted executor does not re-embed the
corpus and a repeated or re-indented query is not embedded twice.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clawstream.processors.caching.embeddings import EmbeddingCache
from clawstream.processors.tools.base import ToolContext, ToolSpec

CORPUS_DIR = Path(__file__).parent / "corpus"


@dataclass(frozen=True)
class Document:
    name: str
    text: str


def load_corpus(directory: Path = CORPUS_DIR) -> list[Document]:
    return [Document(p.stem, p.read_text().strip()) for p in sorted(directory.glob("*.md"))]


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


class Retriever:
    """Top-k documents by cosine similarity of MiniLM embeddings."""

    # The corpus ships with the code: results change only with the query, k or a release.
    spec = ToolSpec(
        name="retrieve", version="1", cache_params=("query", "k"),
        description="Search the clawstream documentation (Kafka, Faust, Redis, Ray, lanes, "
                    "retries) for passages about a question.",
        parameters_json=json.dumps({
            "type": "object", "required": ["query"], "additionalProperties": False,
            "properties": {"query": {"type": "string", "description": "What to look for."},
                           "k": {"type": "integer", "minimum": 1, "maximum": 5,
                                 "default": 2}}}, sort_keys=True))

    def __init__(self, embeddings: EmbeddingCache) -> None:
        self._embeddings = embeddings
        self._docs = load_corpus()

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        query = str(arguments.get("query", "")).strip()
        k = int(str(arguments.get("k", 2)))
        if not query:
            raise ValueError("retrieve needs a non-empty 'query'")
        *doc_vectors, query_vector = await self._embeddings.embed(
            [d.text for d in self._docs] + [query])
        scored = sorted(
            ((_cosine(query_vector, v), d) for v, d in zip(doc_vectors, self._docs, strict=True)),
            key=lambda pair: pair[0], reverse=True,
        )
        return json.dumps([{"doc": d.name, "score": round(s, 4), "text": d.text}
                           for s, d in scored[:k]])
