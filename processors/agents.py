"""Agent definitions: what an agent does per request, and under which version."""

from __future__ import annotations

from dataclasses import dataclass, field

from clawstream.settings import get_settings


@dataclass(frozen=True)
class AgentSpec:
    name: str
    version: str
    system_prompt: str
    uses_retrieval: bool
    max_tokens: int = 64
    temperature: float = 0.0
    prompt_version: str = "p1"
    context_exchanges: int = field(default_factory=lambda: get_settings().context_exchanges)
    task_class: str = "chat"
    """Picks the model pool (settings.task_pools): short interface messages -> small model,
    research and reports -> large."""


AGENTS: dict[str, AgentSpec] = {
    spec.name: spec
    for spec in (
        AgentSpec(
            name="researcher",
            version="1.0.0",
            system_prompt=(
                "You are a helpful assistant for the clawstream platform. Answer in one or two "
                "short sentences, using the notes when they help."
            ),
            uses_retrieval=True,
            task_class="research",
        ),
        AgentSpec(
            name="chat",
            version="1.0.0",
            system_prompt="You are a helpful assistant. Answer in one or two short sentences.",
            uses_retrieval=False,
        ),
    )
}


def get_agent(name: str) -> AgentSpec | None:
    return AGENTS.get(name)
