"""Prompt-output, tool-result and embedding caches in Redis, with their accounting."""

from clawstream.processors.caching.control import CacheControl, control_for_request
from clawstream.processors.caching.layer import Caches, StepOutcome
from clawstream.processors.caching.report import CacheReport, collecting, merge_records

__all__ = [
    "CacheControl",
    "CacheReport",
    "Caches",
    "StepOutcome",
    "collecting",
    "control_for_request",
    "merge_records",
]
