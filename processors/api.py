"""The API a team writes its agents and tools with: ``from clawstream import Agent, tool``.

A module named in ``CLAWSTREAM_AGENT_MODULES`` (or in the ``clawstream.agents`` entry-point
group) defines agents and tools at module level, and the worker finds them; a module that
needs more control has a ``register(registry)`` function instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from clawstream.processors.agents import AgentSpec, FanOut, Step, SubAgent
from clawstream.processors.tools.base import Tool, ToolContext
from clawstream.processors.tools.functions import FunctionTool, tool

__all__ = ["Agent", "FanOut", "FunctionTool", "SubAgent", "ToolContext", "tool"]


@dataclass(frozen=True)
class Agent:
    """An agent: instructions, the tools its model may call, and its limits.

    ``model`` is the task class that picks the model pool (``chat``, ``research``, ...:
    ``CLAWSTREAM_TASK_POOLS``); ``max_steps`` and ``token_budget`` bound one request
    (past them the answer is ``degraded`` with what the agent has so far); ``plan`` makes it
    a fixed pipeline instead of letting the model decide.

    Several versions of one agent may be declared side by side (the same ``name``, another
    ``version``): exactly one is live, the others say ``candidate=True`` and get work only
    from a routing rule (``clawstream canary set``) or an eval (``--version``).

    ``subagents`` are the agents its model may hand tasks to (a ``delegate`` function, next
    to its tools); each child runs as a request of its own, inside this request's deadline
    and budget (``token_budget``, ``cost_budget_usd``), at most ``max_fanout`` at once and
    ``max_depth`` levels deep. A plan can fan out declaratively with a
    :class:`~clawstream.processors.agents.FanOut` step."""

    name: str
    instructions: str
    tools: Sequence[Tool | str] = ()
    model: str = "chat"
    max_steps: int = 8
    token_budget: int | None = None
    temperature: float = 0.0
    max_tokens: int = 256
    version: str = "1"
    context_exchanges: int | None = None
    step_timeout_s: float | None = None
    cache_ttl_s: float | None = None
    plan: tuple[Step, ...] | None = None
    candidate: bool = False
    description: str = ""
    subagents: Sequence[SubAgent | str] = ()
    max_fanout: int = 8
    max_depth: int = 2
    cost_budget_usd: float | None = None
    tool_objects: tuple[Tool, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        objects = tuple(t for t in self.tools if not isinstance(t, str))
        object.__setattr__(self, "tool_objects", objects)

    @property
    def tool_names(self) -> tuple[str, ...]:
        return tuple(t if isinstance(t, str) else t.spec.name for t in self.tools)

    def spec(self) -> AgentSpec:
        return AgentSpec(name=self.name, version=self.version,
                         system_prompt=self.instructions, plan=self.plan,
                         tools=self.tool_names, max_steps=self.max_steps,
                         token_budget=self.token_budget, max_tokens=self.max_tokens,
                         temperature=self.temperature,
                         context_exchanges=self.context_exchanges,
                         step_timeout_s=self.step_timeout_s, cache_ttl_s=self.cache_ttl_s,
                         task_class=self.model, description=self.description,
                         subagents=tuple(s if isinstance(s, SubAgent) else SubAgent(s)
                                         for s in self.subagents),
                         max_fanout=self.max_fanout, max_depth=self.max_depth,
                         cost_budget_usd=self.cost_budget_usd,
                         candidate=self.candidate)
