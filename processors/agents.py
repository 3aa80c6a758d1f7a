"""Agent declarations, as the coordinator reads them: what an agent may do per request.

An agent either lets the model decide (``plan`` None: each model step sees the agent's
tools and answers with text or tool calls, which run as steps, until a final answer or a
limit) or follows a fixed plan of tool and model steps. Either way it is declared, not
coded in the coordinator, so the coordinator can reason about it (which steps mutate,
which are expensive, how long each may take) and every agent gets retries, budgets,
ledger and compensation for free. Teams write agents with :mod:`clawstream.processors.api`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from clawstream.processors.tools.base import ToolSpec
from clawstream.schemas.records import AgentRequest

DELEGATE = "delegate"
"""The function a deciding agent's model calls to hand a task to one of its sub-agents."""

ToolArguments = dict[str, Any]
"""A tool call's arguments, as the tool's JSON arguments object."""


@dataclass(frozen=True)
class ToolStep:
    tool: str
    arguments: Callable[[AgentRequest], ToolArguments]
    """The tool's arguments, from the request."""
    expensive: bool = False


@dataclass(frozen=True)
class ModelStep:
    """A model call over the conversation's context and the notes of earlier tool steps."""

    expensive: bool = False


def _the_request_text(request: AgentRequest) -> list[str]:
    return [request["text"]]


@dataclass(frozen=True)
class FanOut:
    """A plan step that delegates in parallel: the same task to several agents
    (``FanOut(("critic", "editor", "checker"))``), several tasks to one agent
    (``FanOut(("researcher",), tasks=lambda req: [...])``), or task i to agent i.

    ``tasks`` builds the tasks from the request (default: its text). With ``quorum`` k the
    step is done once k children answered well; the others are cancelled ("first good
    answer" with k=1). The children's answers are the notes of the next model step, or the
    request's answer if the plan ends here."""

    agents: tuple[str, ...]
    tasks: Callable[[AgentRequest], Sequence[str]] = _the_request_text
    quorum: int | None = None
    attempts: int = 1
    """Attempts of each child (a failed child is retried as a new child)."""
    timeout_s: float | None = None
    """Each child's own deadline from its start, if sooner than the parent's allows."""
    expensive: bool = False


Step = ToolStep | ModelStep | FanOut


@dataclass(frozen=True)
class SubAgent:
    """A sub-agent an agent's model may delegate to (the ``delegate`` function)."""

    agent: str
    attempts: int = 1
    """A failed child is retried as a new child (new ids) up to this many times."""
    timeout_s: float | None = None
    """The child's own deadline from its start, if sooner than the parent's allows."""


@dataclass(frozen=True)
class AgentSpec:
    name: str
    version: str
    system_prompt: str
    plan: tuple[Step, ...] | None = None
    """A fixed plan; None: the model decides, with :attr:`tools`."""
    tools: tuple[str, ...] = ()
    """The tools the model may call (by name)."""
    max_steps: int | None = None
    """Steps (model and tool) one request may take; None: the conversation's budget only."""
    token_budget: int | None = None
    """Tokens one request may spend; None: the conversation's budget only."""
    passthrough: bool = False
    """One model call over the client's own chat and tools, its answer returned as it is
    (tool calls included, not run): a governed model call for OpenAI clients."""
    max_tokens: int = 64
    temperature: float = 0.0
    prompt_version: str = "p1"
    context_exchanges: int | None = None
    """Exchanges kept in the prompt; None = the runtime's setting (``context_exchanges``)."""
    step_timeout_s: float | None = None
    """Run-time limit of this agent's steps; None = the lane's (a tool's own limit wins)."""
    cache_ttl_s: float | None = None
    """Prompt-output cache TTL of this agent's model steps; None = the default (300 s)."""
    task_class: str = "chat"
    """Picks the model pool (settings.task_pools): short interface messages -> small model,
    research and reports -> large."""
    candidate: bool = False
    """A version declared beside the live one, for a canary: it gets work only from a
    routing rule (``clawstream canary``) or a request's ``agent_version`` option."""
    description: str = ""
    """What the agent does, in a sentence: what a delegating model reads about it."""
    subagents: tuple[SubAgent, ...] = ()
    """The agents its model may delegate to (the ``delegate`` function)."""
    max_fanout: int = 8
    """Sub-agents one of its requests may run at once."""
    max_depth: int = 2
    """The deepest level of sub-agents (below the client's request) its delegations may
    create; a child is held to the tightest limit above it too."""
    cost_budget_usd: float | None = None
    """USD one request may spend, its sub-agents included; None: no limit of its own."""

    def subagent(self, name: str) -> SubAgent | None:
        return next((s for s in self.subagents if s.agent == name), None)


PASSTHROUGH_PREFIX = "model/"
"""Names of the pass-through agents, one per model pool: ``model/<pool>`` (a ``/`` no team
agent's name has)."""
PASSTHROUGH_DEFAULT_TOKENS = 128
"""A governed call's ``max_tokens`` when its client sends none; the client's own is capped
by ``Settings.model_max_tokens``."""


def passthrough_agent(pool: str) -> AgentSpec:
    """The governed model call on ``pool``: one model step over the client's own messages and
    tools, routed to that pool (its task class names it), its answer returned as it is."""
    return AgentSpec(name=PASSTHROUGH_PREFIX + pool, version="1", system_prompt="",
                     passthrough=True, max_tokens=PASSTHROUGH_DEFAULT_TOKENS, task_class=pool)


class Catalog(Protocol):
    """What the coordinator's rules may look up: declarations only, no clients, no I/O
    (:class:`clawstream.processors.registry.Registry` is the one a worker builds)."""

    def agent(self, name: str, version: str | None = None) -> AgentSpec | None:
        """A version of the agent; None: its live (non-candidate) version."""
        ...

    def versions(self, name: str) -> tuple[str, ...]:
        """The agent's versions, the live one first; empty for an unknown agent."""
        ...

    def tool_spec(self, name: str) -> ToolSpec | None: ...
