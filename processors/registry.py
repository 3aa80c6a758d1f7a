"""The agents and tools a worker runs: built-in examples plus the modules a team names.

A worker loads ``settings.agent_modules`` (``CLAWSTREAM_AGENT_MODULES=myco.agents,...``)
and the modules of the ``clawstream.agents`` entry-point group. A module either has a
``register(registry)`` function that adds its agents and tools, or defines
:class:`~clawstream.processors.api.Agent` and ``@tool`` objects at module level, which are
registered as found (an agent's tool objects with it). The
coordinator's rules read only the declarations (:class:`Catalog`: agent specs and tool
specs, no clients); the tool executor builds the implementations once, from factories,
with the worker's shared resources. Declarations are checked when the registry is
complete, so a plan that names a missing tool fails the worker's start, not a request.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import ModuleType

import redis.asyncio as aioredis

from clawstream.config import Settings
from clawstream.processors.agents import DELEGATE, AgentSpec, FanOut, ToolStep, passthrough_agent
from clawstream.processors.api import Agent
from clawstream.processors.caching.embeddings import EmbeddingCache
from clawstream.processors.tools.base import Tool, ToolSpec
from clawstream.processors.tools.functions import NAME, FunctionTool


class RegistryError(ValueError):
    """A module or declaration the worker cannot run with; raised at start-up."""


@dataclass(frozen=True)
class ToolResources:
    """What a tool implementation may use; built once per worker process."""

    settings: Settings
    redis: aioredis.Redis
    embeddings: EmbeddingCache


ToolFactory = Callable[[ToolResources], Tool]


class Registry:
    def __init__(self) -> None:
        self._agents: dict[str, dict[str, AgentSpec]] = {}
        """Agent name -> version -> declaration, in the order they were added."""
        self._tools: dict[str, tuple[ToolSpec, ToolFactory]] = {}

    def add_agent(self, spec: AgentSpec) -> None:
        """One version of an agent; several versions of a name may live side by side."""
        versions = self._agents.setdefault(spec.name, {})
        if spec.version in versions:
            raise RegistryError(f"agent {spec.name!r} version {spec.version!r} is registered "
                                "twice")
        versions[spec.version] = spec

    def add_tool(self, spec: ToolSpec, factory: ToolFactory) -> None:
        if spec.name in self._tools:
            raise RegistryError(f"tool {spec.name!r} is registered twice")
        self._tools[spec.name] = (spec, factory)

    def add(self, thing: Agent | Tool) -> None:
        """An agent (with the tool objects it names) or a ready tool object."""
        if isinstance(thing, Agent):
            for tool in thing.tool_objects:
                self._add_ready(tool)
            self.add_agent(thing.spec())
        else:
            self._add_ready(thing)

    def _add_ready(self, tool: Tool) -> None:
        known = self._tools.get(tool.spec.name)
        if known is not None and known[0] == tool.spec:
            return  # the same tool, named by two agents
        self.add_tool(tool.spec, lambda _resources: tool)

    def agent(self, name: str, version: str | None = None) -> AgentSpec | None:
        """A version of the agent; None: its live version (the one not marked candidate)."""
        versions = self._agents.get(name)
        if not versions:
            return None
        if version is not None:
            return versions.get(version)
        return next((s for s in versions.values() if not s.candidate),
                    next(iter(versions.values())))

    def _live(self, name: str) -> AgentSpec:
        live = self.agent(name)
        assert live is not None  # every name registered has a version
        return live

    def versions(self, name: str) -> tuple[str, ...]:
        """The agent's versions, the live one first."""
        live = self.agent(name)
        if live is None:
            return ()
        return (live.version, *(v for v in self._agents[name] if v != live.version))

    def tool_spec(self, name: str) -> ToolSpec | None:
        entry = self._tools.get(name)
        return entry[0] if entry else None

    @property
    def agent_names(self) -> list[str]:
        """The team's agents (the pass-through ones are listed as :attr:`pools`)."""
        return sorted(name for name in self._agents
                      if not self._live(name).passthrough)

    @property
    def pools(self) -> list[str]:
        """The model pools a client may call directly (governed pass-through calls)."""
        return sorted(spec.task_class for spec in self._specs() if spec.passthrough)

    def build_tools(self, resources: ToolResources) -> dict[str, Tool]:
        return {name: factory(resources) for name, (_, factory) in self._tools.items()}

    def _specs(self) -> list[AgentSpec]:
        return [spec for versions in self._agents.values() for spec in versions.values()]

    def check(self) -> None:
        """Every tool an agent names, and every compensation, is registered; an agent
        declared in several versions has exactly one live version."""
        missing = [f"agent {a.name!r} uses unknown tool {name!r}"
                   for a in self._specs()
                   for name in [*a.tools, *(s.tool for s in a.plan or ()
                                            if isinstance(s, ToolStep))]
                   if name not in self._tools]
        missing += [f"agent {a.name!r} offers tool {name!r} to its model, but models take "
                    "only names of letters, digits, _ and - (at most 64)"
                    for a in self._specs() if a.plan is None for name in a.tools
                    if not NAME.match(name)]
        missing += [_live_problem(name, list(versions.values()))
                    for name, versions in self._agents.items()
                    if sum(not s.candidate for s in versions.values()) != 1]
        missing += [f"tool {spec.name!r} names unknown compensation {spec.compensation!r}"
                    for spec, _ in self._tools.values()
                    if spec.compensation and spec.compensation not in self._tools]
        for agent in self._specs():
            missing += self._delegation_problems(agent)
        if missing:
            raise RegistryError("; ".join(missing))

    def _delegation_problems(self, agent: AgentSpec) -> list[str]:
        """Sub-agents and fan-out steps name registered agents, within sane limits."""
        problems = []
        fan_outs = [s for s in agent.plan or () if isinstance(s, FanOut)]
        named = [s.agent for s in agent.subagents] + [a for f in fan_outs for a in f.agents]
        problems += [f"agent {agent.name!r} delegates to unknown agent {name!r}"
                     for name in dict.fromkeys(named) if name not in self._agents]
        problems += [f"agent {agent.name!r} delegates to {name!r}, a pass-through agent"
                     for name in dict.fromkeys(named)
                     if (spec := self.agent(name)) is not None and spec.passthrough]
        if agent.subagents and agent.plan is not None:
            problems.append(f"agent {agent.name!r} follows a plan and declares subagents: "
                            "a plan delegates with FanOut steps")
        if agent.subagents and DELEGATE in agent.tools:
            problems.append(f"agent {agent.name!r} has a tool named {DELEGATE!r}, the name of "
                            "the function its model delegates with")
        if agent.max_fanout < 1 or agent.max_depth < 0:
            problems.append(f"agent {agent.name!r}: max_fanout must be >= 1 and max_depth "
                            ">= 0")
        problems += [f"agent {agent.name!r}: a FanOut needs agents, attempts >= 1 and a "
                     "quorum >= 1" for f in fan_outs
                     if not f.agents or f.attempts < 1 or (f.quorum is not None and f.quorum < 1)]
        problems += [f"agent {agent.name!r}: sub-agent {s.agent!r} needs attempts >= 1"
                     for s in agent.subagents if s.attempts < 1]
        return problems




def _live_problem(name: str, versions: list[AgentSpec]) -> str:
    live = [s.version for s in versions if not s.candidate]
    if not live:
        return (f"agent {name!r} has only candidate versions "
                f"({', '.join(s.version for s in versions)}): declare one without "
                "candidate=True, the version it runs when no canary says otherwise")
    return (f"agent {name!r} has several live versions ({', '.join(live)}): mark all but "
            "one candidate=True")


def register_module(registry: Registry, module: ModuleType) -> None:
    register = getattr(module, "register", None)
    if callable(register):
        register(registry)
        return
    found = [v for v in vars(module).values() if isinstance(v, Agent | FunctionTool)]
    if not found:
        raise RegistryError(f"agent module {module.__name__!r} defines no Agent or @tool and "
                            "has no register(registry) function")
    for thing in found:
        registry.add(thing)


def register_all(registry: Registry, module_names: Iterable[str]) -> Registry:
    for name in module_names:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise RegistryError(f"cannot import agent module {name!r}: {exc}") from exc
        register_module(registry, module)
    registry.check()
    return registry


ENTRY_POINT_GROUP = "clawstream.agents"


def entry_point_modules() -> list[str]:
    """Modules named by installed packages in the ``clawstream.agents`` entry-point group."""
    return [ep.value.split(":")[0] for ep in importlib.metadata.entry_points(
        group=ENTRY_POINT_GROUP)]


def load_registry(settings: Settings) -> Registry:
    """The built-in examples, then the entry points', then the modules named in settings."""
    modules = ["clawstream.processors.builtin", *entry_point_modules(),
               *settings.agent_modules]
    registry = Registry()
    for pool in settings.pools:
        registry.add_agent(passthrough_agent(pool))
    return register_all(registry, list(dict.fromkeys(modules)))

