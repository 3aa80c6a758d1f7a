"""The retrieval tool's corpus index: embedded once per embedding model, queries alone."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from clawstream.processors.tools.base import ToolContext
from clawstream.processors.tools.retrieval import Retriever, load_corpus


class Models:
    def __init__(self) -> None:
        self.current = "model-a"

    async def get(self, kind: str) -> str:
        assert kind == "embedding"
        return self.current


class Embeddings:
    """Stands in for the embedding cache: records what it was asked to embed."""

    def __init__(self) -> None:
        self.models = Models()
        self.calls: list[list[str]] = []

    async def embed(self, texts: list[str]) -> list[list[float]]:
        self.calls.append(list(texts))
        # A text's vector: its length and its first letter, so the ranking is checkable.
        return [[float(len(t)), float(ord(t.strip()[0]))] for t in texts]


CTX = ToolContext(step_id="tool:c:1", attempt=1, timeout_s=5.0)


def _run(retriever: Retriever, query: str) -> list[dict[str, Any]]:
    return list(json.loads(asyncio.run(retriever.run({"query": query, "k": 2}, CTX))))


def test_the_corpus_is_embedded_once_then_only_queries() -> None:
    embeddings = Embeddings()
    retriever = Retriever(embeddings)  # type: ignore[arg-type]
    corpus = [d.text for d in load_corpus()]
    first = _run(retriever, "where are the caches")
    _run(retriever, "how do retries work")
    assert embeddings.calls == [corpus, ["where are the caches"], ["how do retries work"]]
    assert len(first) == 2 and {"doc", "score", "text"} <= first[0].keys()


def test_a_new_embedding_model_rebuilds_the_index() -> None:
    embeddings = Embeddings()
    retriever = Retriever(embeddings)  # type: ignore[arg-type]
    _run(retriever, "q1")
    embeddings.models.current = "model-b"
    _run(retriever, "q2")
    corpus = [d.text for d in load_corpus()]
    assert embeddings.calls == [corpus, ["q1"], corpus, ["q2"]]


def test_an_empty_query_is_refused() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        _run(Retriever(Embeddings()), "  ")  # type: ignore[arg-type]
