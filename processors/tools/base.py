"""What a tool declares about itself, and what the executor tells it about the call.

The coordinator plans retries, time budgets and compensations from the declaration alone,
so a tool's author decides its contract in one place: does it mutate, how many attempts
it gets, how long one call may run, and which tool undoes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class ToolSpec:
    name: str
    version: str = "1"
    mutating: bool = False
    max_attempts: int = 2
    timeout_s: float | None = None
    """Run-time limit of one call; None = the lane's step limit."""
    compensation: str | None = None
    """Tool that undoes a completed call of this one when its conversation fails later."""
    cache_ttl_s: float | None = None
    """Tool-result cache TTL; None = the default (60 s), 0 = never cached. Mutating tools
    are never cached whatever this says."""
    cache_params: tuple[str, ...] | None = None
    """The arguments that decide the result (the cache key); None = all of them."""
    description: str = ""
    """What the tool does, for the model choosing among tools."""
    parameters_json: str | None = None
    """The JSON schema of the tool's arguments (an object), for the model; None = any."""


@dataclass(frozen=True)
class ToolContext:
    step_id: str
    """The step's idempotency key: a mutating tool passes it on to the system it changes."""
    attempt: int
    timeout_s: float
    arguments_json: str = "{}"
    """The call's arguments as sent (the ledger and caches key on the parsed ones)."""


class ToolError(Exception):
    """An expected failure of a tool call; ``retryable`` says whether to try again."""

    def __init__(self, message: str, *, retryable: bool = True,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after_s = retry_after_s


INVALID_ARGUMENTS = "ToolArgumentsInvalid"
"""The error class of a call whose arguments do not fit: the coordinator hands its message
back to a deciding model as the call's result instead of failing the request."""


class ToolArgumentsInvalid(ValueError):
    """The arguments do not fit the tool's declared types: never retried, and a model that
    made the call gets this message back as the tool's result, to correct itself."""


class Tool(Protocol):
    spec: ToolSpec

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        """Return the tool's output as text; raise ToolError (or ValueError for bad input)."""
        ...
