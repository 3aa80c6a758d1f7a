"""What a model call costs, from the price table in settings.

One function prices every token the system bills (generation and embeddings), so the
cost on a step result, the savings on a cache hit and the `clawstream cost` report all
agree; a model missing from the table costs 0 and is logged once, never guessed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

log = logging.getLogger(__name__)
_warned: set[str] = set()

PriceTable = Mapping[str, Mapping[str, float]]


def cost_usd(prices: PriceTable, model: str | None, prompt_tokens: int,
             completion_tokens: int = 0) -> float:
    """USD for ``prompt_tokens`` in and ``completion_tokens`` out on ``model``."""
    price = prices.get(model or "")
    if price is None:
        if model not in _warned:
            _warned.add(model or "")
            log.warning("no price for model %r: its calls are counted at 0 USD", model)
        return 0.0
    return (prompt_tokens * price.get("input_per_1k", 0.0)
            + completion_tokens * price.get("output_per_1k", 0.0)) / 1000.0


def estimate_tokens(text: str) -> int:
    """Tokens of an embedded text, estimated at 4 characters per token (the embedding
    endpoint does not report counts); used only to price embeddings."""
    return max(1, (len(text) + 3) // 4)
