"""Per-conversation budgets: a step count and a token budget, both over the conversation's
whole life, checked by the coordinator before each new step (pure functions).

A request may lower its conversation's budgets through ``options`` (``max_steps``,
``token_budget``) but never raise them above the settings: budgets protect the operator.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from clawstream.config import Settings


@dataclass(frozen=True)
class Budget:
    max_steps: int
    token_budget: int


def conversation_budget(settings: Settings, options: Mapping[str, str]) -> Budget:
    def lowered(name: str, ceiling: int) -> int:
        try:
            return max(0, min(ceiling, int(options[name])))
        except (KeyError, ValueError):
            return ceiling

    return Budget(lowered("max_steps", settings.conversation_max_steps),
                  lowered("token_budget", settings.conversation_token_budget))


def spent_tokens(usage: Mapping[str, Any]) -> int:
    return int(usage.get("prompt_tokens", 0)) + int(usage.get("completion_tokens", 0))


def exhausted(spent: Mapping[str, int], budget: Budget) -> str | None:
    """The reason the conversation may not take another step, or None.

    ``spent`` counts ``steps`` and ``tokens`` already used by the conversation."""
    if spent.get("steps", 0) >= budget.max_steps:
        return (f"conversation step budget exhausted: {spent.get('steps', 0)} of "
                f"{budget.max_steps} steps used")
    if spent.get("tokens", 0) >= budget.token_budget:
        return (f"conversation token budget exhausted: {spent.get('tokens', 0)} of "
                f"{budget.token_budget} tokens used")
    return None
