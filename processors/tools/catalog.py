"""Every tool's declaration by name, without its implementation (no clients, no I/O), for
the coordinator's planning; the executor pairs them with implementations."""

from __future__ import annotations

from functools import lru_cache

from clawstream.config import get_settings
from clawstream.processors.tools.base import ToolSpec
from clawstream.processors.tools.retrieval import Retriever


@lru_cache(maxsize=1)
def tool_specs() -> dict[str, ToolSpec]:
    specs = {Retriever.spec.name: Retriever.spec}
    if get_settings().fault_injection:
        from clawstream.processors.tools.faults import FAULT_SPECS

        specs.update({spec.name: spec for spec in FAULT_SPECS})
    return specs


def get_tool_spec(name: str) -> ToolSpec | None:
    return tool_specs().get(name)
