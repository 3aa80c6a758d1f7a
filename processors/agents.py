"""Agent declarations, as the coordinator reads them: what an agent may do per request.

An agent either lets the model decide (``plan`` None: each model step sees the agent's
tools and answers with text or tool calls, which run as steps, until a final answer or a
limit) or follows a fixed plan of tool and model steps. Either way it is declared, not
coded in the coordinator, so the coordinator can reason about it (which steps mutate,
which are expensive, how long each may take) and every agent gets retries, budgets,
ledger and compensation for free. Teams write agents with :mod:`clawstream.processors.api`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from clawstream.processors.tools.base import ToolSpec
from clawstream.schemas.records import AgentRequest

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


Step = ToolStep | ModelStep


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


PASSTHROUGH_PREFIX = "model/"
"""Names of the pass-through agents, one per model pool: ``model/<pool>`` (a ``/`` no team
agent's name has)."""
PASSTHROUGH_MAX_TOKENS = 512
"""A governed call's ``max_tokens`` is the client's (the ``max_tokens`` option), at most
this; without one, :data:`PASSTHROUGH_DEFAULT_TOKENS`."""
PASSTHROUGH_DEFAULT_TOKENS = 128


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
