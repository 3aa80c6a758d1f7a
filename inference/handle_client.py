"""Generation through the generator's DeploymentHandle: the worker as a Ray driver.

Opt-in (``CLAWSTREAM_INFERENCE_TRANSPORT=handle``); HTTP stays the default. Measured on
the 2-core machine (``docs/benchmarks.md``, throughput): a sequential call of the 1 ms
simulated model takes ~5.6 ms p50 through the handle, ~13.7 ms over HTTP to the
generator's route, because the handle skips Serve's proxy process and the ASGI layer in
the replica. The price: Ray is imported and connected in the worker (``ray.init``, about
1.5 s, once, on the first call), and the worker depends on the Ray cluster's address, not
only on an HTTP URL.

Only ``generate`` moves: embeddings and health keep HTTP (they are off the hot path). The
error contract stays the client's: Serve's back-pressure on the handle
(``BackPressureError``: more than ``max_queued_requests`` waiting) is
:class:`InferenceOverloaded` with the deployment's Retry-After, a rejected input is
:class:`InferenceValidationError`, a backend failure :class:`InferenceBackendError`.

``ray.init`` runs in a thread, never on the worker's main thread: on the main thread Ray
replaces the process's SIGTERM handler with ``sys.exit``, which would skip the worker's
drain.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from clawstream.inference.client import (
    DEFAULT_TIMEOUT_S,
    GenerationResult,
    InferenceBackendError,
    InferenceClient,
    InferenceError,
    InferenceOverloaded,
    InferenceValidationError,
)
from clawstream.inference.errors import BackendFailure, InputRejected, Overloaded
from clawstream.inference.protocol import GENERATOR_APP_NAME, GenerateRequest


def classify(exc: BaseException, retry_after_s: float) -> InferenceError:
    """The client's error for what a handle call raised (replica exceptions arrive as
    RayTaskErrors that subclass the original; their message is the remote traceback)."""
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    message = str(getattr(exc, "cause", None) or exc)
    if isinstance(exc, InputRejected):
        return InferenceValidationError(f"generator: {message}", status=400)
    if isinstance(exc, Overloaded):
        cause = getattr(exc, "cause", None) or exc
        after = getattr(cause, "retry_after_s", None)
        return InferenceOverloaded(f"generator: {message}", status=503,
                                   retry_after=retry_after_s if after is None else after)
    if isinstance(exc, BackPressureError):
        after = getattr(exc, "_retry_after_s", None)
        return InferenceOverloaded(f"generator: {exc.message}", status=503,
                                   retry_after=retry_after_s if after is None else after)
    if isinstance(exc, DeploymentUnavailableError):
        return InferenceOverloaded(f"generator: {exc.message}", status=503,
                                   retry_after=retry_after_s)
    if isinstance(exc, BackendFailure):
        return InferenceBackendError(f"generator: {message}", status=500)
    return InferenceBackendError(f"generator: {type(exc).__name__}: {message}")


class HandleInferenceClient(InferenceClient):
    """:class:`InferenceClient` whose ``generate`` calls the generator's handle."""

    def __init__(self, base_url: str, *, ray_address: str, retry_after_s: float,
                 timeout: float = DEFAULT_TIMEOUT_S) -> None:
        super().__init__(base_url, timeout=timeout)
        self._ray_address = ray_address
        self._retry_after_s = retry_after_s
        self._handle: Any = None
        self._connecting = asyncio.Lock()

    def _connect(self) -> Any:
        import ray
        from ray import serve

        if not ray.is_initialized():
            ray.init(address=self._ray_address, log_to_driver=False,
                     logging_level=logging.WARNING, configure_logging=False)
        return serve.get_deployment_handle("generator", app_name=GENERATOR_APP_NAME)

    async def _generator(self) -> Any:
        async with self._connecting:
            if self._handle is None:
                try:
                    self._handle = await asyncio.to_thread(self._connect)
                except Exception as exc:
                    raise InferenceBackendError(
                        f"cannot reach the generator's handle at {self._ray_address}: "
                        f"{type(exc).__name__}: {exc}") from exc
        return self._handle

    async def _generate(self, request: GenerateRequest) -> GenerationResult:
        handle = await self._generator()
        try:
            result: GenerationResult = await handle.generate.remote(request, time.time())
        except Exception as exc:
            raise classify(exc, self._retry_after_s) from exc
        return result
