"""What a DeploymentHandle call's failures become for the dispatcher: the same error
classes, retry decisions and Retry-After as over HTTP (no cluster needed)."""

from __future__ import annotations

import pytest
from ray.exceptions import RayTaskError
from ray.serve._private.common import DeploymentID
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from clawstream.inference.client import (
    InferenceBackendError,
    InferenceOverloaded,
    InferenceTimeout,
    InferenceValidationError,
)
from clawstream.inference.errors import (
    BackendFailure,
    GenerationTimeout,
    InputRejected,
    Overloaded,
)
from clawstream.inference.handle_client import classify


def _remote(exc: Exception) -> BaseException:
    """How a replica's exception reaches the caller: a RayTaskError that is also an
    instance of the original class."""
    return RayTaskError("generate", "Traceback (most recent call last): ...", exc
                        ).as_instanceof_cause()


def test_rejected_input_is_a_validation_error_never_retried() -> None:
    error = classify(_remote(InputRejected("model 'gpt-4' is not served here")), 1.0)
    assert isinstance(error, InferenceValidationError) and not error.retryable
    assert "gpt-4" in str(error) and "Traceback" not in str(error)


@pytest.mark.parametrize(("exc", "expected"), [
    (BackPressureError(17, 16, 503, 2.0), 2.0),  # Serve's queue is full
    (BackPressureError(17, 16), 1.0),  # no Retry-After configured: the settings' one
    (_remote(Overloaded("injected", 3.0)), 3.0),
    (DeploymentUnavailableError(DeploymentID("generator", "clawstream-generator")), 1.0),
])
def test_overload_is_retryable_with_its_retry_after(exc: BaseException, expected: float
                                                    ) -> None:
    error = classify(exc, 1.0)
    assert isinstance(error, InferenceOverloaded) and error.retryable
    assert error.retry_after == expected and error.status == 503


@pytest.mark.parametrize("exc", [_remote(BackendFailure("llama.cpp failed")),
                                 ConnectionError("actor died")])
def test_anything_else_is_a_retryable_backend_error(exc: BaseException) -> None:
    error = classify(exc, 1.0)
    assert isinstance(error, InferenceBackendError) and error.retryable


def test_an_upstreams_timeout_is_a_retryable_timeout_naming_its_deployment() -> None:
    error = classify(_remote(GenerationTimeout("upstream silent for 60 s")), 1.0, "upstream")
    assert isinstance(error, InferenceTimeout) and error.retryable and error.status == 504
    assert str(error).startswith("upstream: ") and "silent" in str(error)
