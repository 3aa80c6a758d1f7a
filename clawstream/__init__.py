"""clawstream: AI-agent conversations as Avro events on Kafka.

``from clawstream import Agent, tool, ToolContext`` (``SubAgent``, ``FanOut`` for
sub-agents) is the API a team writes its agents with; it is loaded on first use, so
``import clawstream.config`` (or the CLI) does not import the processors.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clawstream.processors.api import Agent, FanOut, SubAgent, ToolContext, tool

__all__ = ["Agent", "FanOut", "SubAgent", "ToolContext", "tool"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from clawstream.processors import api

        return getattr(api, name)
    raise AttributeError(f"module 'clawstream' has no attribute {name!r}")
