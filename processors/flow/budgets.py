"""Per-conversation budgets: a step count and a token budget, both over the conversation's
whole life, checked by the coordinator before each new step (pure functions).

A request may lower its conversation's budgets through ``options`` (``max_steps``,
``token_budget``) but never raise them above the settings: budgets protect the operator.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from clawstream.config import Settings
from clawstream.processors.state import Spent
from clawstream.schemas.records import Usage


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


NOTHING_SPENT: Spent = {"steps": 0, "tokens": 0}


def spent_tokens(usage: Usage) -> int:
    return usage["prompt_tokens"] + usage["completion_tokens"]


def exhausted(spent: Spent, budget: Budget) -> str | None:
    """The reason the conversation may not take another step, or None."""
    if spent["steps"] >= budget.max_steps:
        return (f"conversation step budget exhausted: {spent['steps']} of "
                f"{budget.max_steps} steps used")
    if spent["tokens"] >= budget.token_budget:
        return (f"conversation token budget exhausted: {spent['tokens']} of "
                f"{budget.token_budget} tokens used")
    return None
