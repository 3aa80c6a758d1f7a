"""Typed, actionable errors of the local stack.

Every message says what failed and what to do about it, because the person reading it
is at a terminal that just ran ``clawstream up`` and wants the next command, not a trace.
"""

from __future__ import annotations


class StackError(RuntimeError):
    """Base class: the local stack could not be brought to the requested state."""


class MissingToolError(StackError):
    """A program the stack needs (java, mvn, redis-server, ray) is not installed."""


class PortInUseError(StackError):
    """A port the stack wants to listen on is held by another process."""

    def __init__(self, message: str, *, port: int, holder: str | None) -> None:
        super().__init__(message)
        self.port = port
        self.holder = holder


class NotReadyError(StackError):
    """A component was started but did not become ready before its deadline (or died)."""


class FetchError(StackError):
    """Fetching a Java program (Kafka's jars, the schema registry) from Maven Central failed."""
