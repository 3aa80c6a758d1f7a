"""The agents and tools a worker runs: built-in examples plus the modules a team names.

A worker loads ``settings.agent_modules`` (``CLAWSTREAM_AGENT_MODULES=myco.agents,...``);
each module has a ``register(registry)`` function that adds its agents and tools. The
coordinator's rules read only the declarations (:class:`Catalog`: agent specs and tool
specs, no clients); the tool executor builds the implementations once, from factories,
with the worker's shared resources. Declarations are checked when the registry is
complete, so a plan that names a missing tool fails the worker's start, not a request.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import redis.asyncio as aioredis

from clawstream.config import Settings
from clawstream.processors.agents import AgentSpec, ToolStep
from clawstream.processors.caching.embeddings import EmbeddingCache
from clawstream.processors.tools.base import Tool, ToolSpec


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
        self._agents: dict[str, AgentSpec] = {}
        self._tools: dict[str, tuple[ToolSpec, ToolFactory]] = {}

    def add_agent(self, spec: AgentSpec) -> None:
        if spec.name in self._agents:
            raise RegistryError(f"agent {spec.name!r} is registered twice")
        self._agents[spec.name] = spec

    def add_tool(self, spec: ToolSpec, factory: ToolFactory) -> None:
        if spec.name in self._tools:
            raise RegistryError(f"tool {spec.name!r} is registered twice")
        self._tools[spec.name] = (spec, factory)

    def agent(self, name: str) -> AgentSpec | None:
        return self._agents.get(name)

    def tool_spec(self, name: str) -> ToolSpec | None:
        entry = self._tools.get(name)
        return entry[0] if entry else None

    @property
    def agent_names(self) -> list[str]:
        return sorted(self._agents)

    def build_tools(self, resources: ToolResources) -> dict[str, Tool]:
        return {name: factory(resources) for name, (_, factory) in self._tools.items()}

    def check(self) -> None:
        """Every tool an agent's plan names, and every compensation, is registered."""
        missing = [f"agent {a.name!r} uses unknown tool {step.tool!r}"
                   for a in self._agents.values() for step in a.plan
                   if isinstance(step, ToolStep) and step.tool not in self._tools]
        missing += [f"tool {spec.name!r} names unknown compensation {spec.compensation!r}"
                    for spec, _ in self._tools.values()
                    if spec.compensation and spec.compensation not in self._tools]
        if missing:
            raise RegistryError("; ".join(missing))


def register_all(registry: Registry, module_names: Iterable[str]) -> Registry:
    for name in module_names:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise RegistryError(f"cannot import agent module {name!r}: {exc}") from exc
        register = getattr(module, "register", None)
        if not callable(register):
            raise RegistryError(f"agent module {name!r} has no register(registry) function")
        register(registry)
    registry.check()
    return registry


def load_registry(settings: Settings) -> Registry:
    """The built-in examples, then the modules named in settings, in that order."""
    return register_all(Registry(), ["clawstream.processors.builtin", *settings.agent_modules])

