"""Server-side failure kinds, each mapped to one HTTP status by :mod:`clawstream.inference.api`.

InputRejected and BackendFailure cross Ray's process boundary (a replica raises, the
ingress catches), so they stay plain exceptions with a single message argument.
"""

from __future__ import annotations


class InputRejected(Exception):
    """The request is well-formed JSON but the model cannot take it (400, never retried).

    Examples: an unknown model id, a prompt longer than the context window.
    """


class Overloaded(Exception):
    """Queues are full; the caller should back off and retry (503 with Retry-After)."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BackendFailure(Exception):
    """The model backend failed on a valid request (500, retryable)."""


class NotReady(Exception):
    """A model deployment has not answered its readiness probe yet (503 on /health)."""


class GenerationTimeout(Exception):
    """The model did not answer in time, e.g. an upstream provider past its timeout (504,
    retryable: the caller's budget decides whether another attempt fits)."""
