"""Context trimming and the recall tool's search.

The prompt keeps only the last N exchanges (settings.context_exchanges, 4-8 is sensible):
small models lose the thread in long prompts and every token costs. Nothing is forgotten:
the coordinator appends each exchange to a per-conversation archive in Redis, and the
``recall`` tool searches the exchanges that fell out of the prompt (word overlap, with
the exchange's own words; no model call, so recall is cheap enough to run every turn).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from clawstream.processors.keys import recall_key
from clawstream.processors.state import Exchange
from clawstream.processors.tools.base import ToolContext, ToolSpec

_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset({
    "a", "an", "and", "are", "do", "does", "for", "how", "i", "in", "is", "it", "of", "on",
    "or", "the", "to", "was", "what", "where", "which", "who", "why", "with", "you", "your",
})


def words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP and len(w) > 1}


def search(exchanges: Sequence[Exchange], query: str, k: int) -> list[dict[str, Any]]:
    """The ``k`` exchanges sharing most words with ``query`` (ties: the most recent first)."""
    wanted = words(query)
    scored = []
    for position, ex in enumerate(exchanges):
        overlap = len(wanted & words(f"{ex['user']} {ex['assistant']}"))
        if overlap:
            scored.append((overlap, position, ex))
    scored.sort(key=lambda t: (t[0], t[1]), reverse=True)
    return [{**ex, "score": overlap} for overlap, _, ex in scored[:k]]


async def archive_exchange(redis: aioredis.Redis, conversation_id: str,
                           exchange: Exchange) -> None:
    """Append an exchange; a redelivered answer may append twice, :func:`older` dedups."""
    await redis.rpush(recall_key(conversation_id), json.dumps(exchange))


async def older(redis: aioredis.Redis, conversation_id: str, kept: int) -> list[Exchange]:
    """The archived exchanges that are no longer in the prompt (all but the last ``kept``)."""
    seen: set[str] = set()
    out = []
    for raw in await redis.lrange(recall_key(conversation_id), 0, -1):
        ex = json.loads(raw)
        if ex["request_id"] not in seen:
            seen.add(ex["request_id"])
            out.append(ex)
    return out[:-kept] if kept else out


class Recall:
    """The ``recall`` tool: older exchanges of a conversation that match a query.

    Arguments: ``conversation_id``, ``query``, ``k`` (default 2) and ``kept`` (exchanges
    still in the prompt, left out of the search; default settings.context_exchanges)."""

    # Reads an archive that grows every turn: a cached answer would miss the latest exchange.
    spec = ToolSpec(
        name="recall", version="1", cache_ttl_s=0,
        description="Find earlier exchanges of this conversation that fell out of the "
                    "context, by words they share with a query.",
        parameters_json=json.dumps({
            "type": "object", "required": ["conversation_id", "query"],
            "properties": {"conversation_id": {"type": "string"},
                           "query": {"type": "string"},
                           "k": {"type": "integer", "minimum": 1, "default": 2}}},
            sort_keys=True))

    def __init__(self, redis: aioredis.Redis, kept_default: int) -> None:
        self._redis = redis
        self._kept = kept_default

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        conversation = str(arguments.get("conversation_id", "")).strip()
        query = str(arguments.get("query", "")).strip()
        if not conversation or not query:
            raise ValueError("recall needs 'conversation_id' and 'query'")
        kept = int(str(arguments.get("kept", self._kept)))
        hits = search(await older(self._redis, conversation, kept), query,
                      int(str(arguments.get("k", 2))))
        return json.dumps(hits)
