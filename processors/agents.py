"""Agent definitions: the plan of steps an agent runs per request, and under which version.

A plan is declared, not coded in the coordinator, so that the coordinator can reason about
it (which steps mutate, which are expensive, how long each may take) and every agent gets
retries, budgets, ledger and compensation for free.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from clawstream.config import get_settings

Record = dict[str, Any]


@dataclass(frozen=True)
class ToolStep:
    tool: str
    arguments: Callable[[Record], Record]
    """The tool's arguments, from the request."""
    expensive: bool = False


@dataclass(frozen=True)
class ModelStep:
    """A model call over the conversation's context and the notes of earlier tool steps."""

    expensive: bool = False


Step = ToolStep | ModelStep


@dataclass(frozen=True)
class AgentSpec:
    name: str
    version: str
    system_prompt: str
    plan: tuple[Step, ...]
    max_tokens: int = 64
    temperature: float = 0.0
    prompt_version: str = "p1"
    context_exchanges: int = field(default_factory=lambda: get_settings().context_exchanges)
    step_timeout_s: float | None = None
    """Run-time limit of this agent's steps; None = the lane's (a tool's own limit wins)."""
    cache_ttl_s: float | None = None
    """Prompt-output cache TTL of this agent's model steps; None = the default (300 s)."""
    task_class: str = "chat"
    """Picks the model pool (settings.task_pools): short interface messages -> small model,
    research and reports -> large."""


def retrieval_query(request: Record) -> Record:
    return {"query": request["text"], "k": 2}


AGENTS: dict[str, AgentSpec] = {
    spec.name: spec
    for spec in (
        AgentSpec(
            name="researcher",
            version="1.1.0",
            system_prompt=(
                "You are a helpful assistant for the clawstream platform. Answer in one or two "
                "short sentences, using the notes when they help."
            ),
            plan=(ToolStep("retrieve", retrieval_query, expensive=True), ModelStep()),
            task_class="research",
        ),
        AgentSpec(
            name="chat",
            version="1.1.0",
            system_prompt="You are a helpful assistant. Answer in one or two short sentences.",
            plan=(ModelStep(),),
            cache_ttl_s=120.0,  # chat drifts faster than answers over the fixed corpus
        ),
    )
}


def get_agent(name: str) -> AgentSpec | None:
    if name in AGENTS:
        return AGENTS[name]
    if get_settings().fault_injection:
        from clawstream.processors.tools.faults import FAULT_AGENTS

        return FAULT_AGENTS.get(name)
    return None
