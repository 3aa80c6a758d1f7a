"""The local stack: real Kafka, Redis, a schema registry, Ray Serve and Faust workers as
detached processes.

Entry points: ``up``, ``down``, ``status`` (``clawstream.deploy.local.stack``); one module per
component (``kafka``, ``redis``, ``schema_registry``, ``ray_cluster``, ``worker``), each with
``start``/``stop``; ``process.Processes`` for pid files, logs and crash tests (``kill``).
"""

from clawstream.deploy.local.errors import (
    FetchError,
    MissingToolError,
    NotReadyError,
    PortInUseError,
    StackError,
)
from clawstream.deploy.local.process import Processes, ProcessInfo
from clawstream.deploy.local.stack import ComponentStatus, Progress, RichProgress, down, status, up

__all__ = [
    "ComponentStatus",
    "FetchError",
    "MissingToolError",
    "NotReadyError",
    "PortInUseError",
    "ProcessInfo",
    "Processes",
    "Progress",
    "RichProgress",
    "StackError",
    "down",
    "status",
    "up",
]
