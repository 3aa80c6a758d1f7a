"""Generation through the generation deployments' handles: the worker as a Ray driver.

Opt-in (``CLAWSTREAM_INFERENCE_TRANSPORT=handle``); HTTP stays the default. Measured on
the 2-core machine (``docs/benchmarks.md``, throughput): a sequential call of the 1 ms
simulated model takes ~5.6 ms p50 through the handle, ~13.7 ms over HTTP to the
generator's route, because the handle skips Serve's proxy process and the ASGI layer in
the replica. The price: Ray is imported and connected in the worker (``ray.init``, about
1.5 s, once, on the first call), and the worker depends on the Ray cluster's address, not
only on an HTTP URL.

Only ``generate`` moves: embeddings and health keep HTTP (they are off the hot path). A
request for one of the pools' upstream models goes to the upstream deployment's handle,
any other to the local generator's, as the HTTP routes do. The
error contract stays the client's: Serve's back-pressure on the handle
(``BackPressureError``: more than ``max_queued_requests`` waiting) is
:class:`InferenceOverloaded` with the deployment's Retry-After, a rejected input is
:class:`InferenceValidationError`, an upstream's timeout :class:`InferenceTimeout`, a
backend failure :class:`InferenceBackendError`.

``ray.init`` runs in a thread, never on the worker's main thread: on the main thread Ray
replaces the process's SIGTERM handler with ``sys.exit``, which would skip the worker's
drain.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection
from typing import Any

from clawstream.inference.client import (
    DEFAULT_TIMEOUT_S,
    GenerationResult,
    InferenceBackendError,
    InferenceClient,
    InferenceError,
    InferenceOverloaded,
    InferenceTimeout,
    InferenceValidationError,
    OnDelta,
)
from clawstream.inference.errors import (
    BackendFailure,
    GenerationTimeout,
    InputRejected,
    Overloaded,
)
from clawstream.inference.protocol import (
    GENERATOR_APP_NAME,
    GENERATOR_DEPLOYMENT,
    UPSTREAM_APP_NAME,
    UPSTREAM_DEPLOYMENT,
    GenerateRequest,
    serves_upstream,
)


def classify(exc: BaseException, retry_after_s: float,
             deployment: str = GENERATOR_DEPLOYMENT) -> InferenceError:
    """The client's error for what a handle call raised (replica exceptions arrive as
    RayTaskErrors that subclass the original; their message is the remote traceback), as
    the HTTP routes would have answered it."""
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    message = str(getattr(exc, "cause", None) or exc)
    if isinstance(exc, InputRejected):
        return InferenceValidationError(f"{deployment}: {message}", status=400)
    if isinstance(exc, Overloaded):
        cause = getattr(exc, "cause", None) or exc
        after = getattr(cause, "retry_after_s", None)
        return InferenceOverloaded(f"{deployment}: {message}", status=503,
                                   retry_after=retry_after_s if after is None else after)
    if isinstance(exc, BackPressureError):
        after = getattr(exc, "_retry_after_s", None)
        return InferenceOverloaded(f"{deployment}: {exc.message}", status=503,
                                   retry_after=retry_after_s if after is None else after)
    if isinstance(exc, DeploymentUnavailableError):
        return InferenceOverloaded(f"{deployment}: {exc.message}", status=503,
                                   retry_after=retry_after_s)
    if isinstance(exc, GenerationTimeout):
        return InferenceTimeout(f"{deployment}: {message}", status=504)
    if isinstance(exc, BackendFailure):
        return InferenceBackendError(f"{deployment}: {message}", status=500)
    return InferenceBackendError(f"{deployment}: {type(exc).__name__}: {message}")


class HandleInferenceClient(InferenceClient):
    """:class:`InferenceClient` whose ``generate`` calls a generation deployment's handle:
    the upstream deployment's for a model in ``upstream_models`` (the pools' upstream
    models, from settings), the local generator's for any other (the same rule as the
    HTTP routes, :func:`protocol.serves_upstream`)."""

    def __init__(self, base_url: str, *, ray_address: str, retry_after_s: float,
                 timeout: float = DEFAULT_TIMEOUT_S,
                 upstream_models: Collection[str] = ()) -> None:
        super().__init__(base_url, timeout=timeout, upstream_models=upstream_models)
        self._ray_address = ray_address
        self._retry_after_s = retry_after_s
        self._handles: dict[str, Any] = {}
        self._connecting = asyncio.Lock()

    def _connect(self, deployment: str, app_name: str) -> Any:
        import ray
        from ray import serve

        if not ray.is_initialized():
            ray.init(address=self._ray_address, log_to_driver=False,
                     logging_level=logging.WARNING, configure_logging=False)
        return serve.get_deployment_handle(deployment, app_name=app_name)

    async def _handle(self, deployment: str, app_name: str) -> Any:
        async with self._connecting:
            if deployment not in self._handles:
                try:
                    self._handles[deployment] = await asyncio.to_thread(
                        self._connect, deployment, app_name)
                except Exception as exc:
                    raise InferenceBackendError(
                        f"cannot reach the {deployment}'s handle at {self._ray_address}: "
                        f"{type(exc).__name__}: {exc}") from exc
        return self._handles[deployment]

    async def _generation_handle(self, request: GenerateRequest) -> tuple[Any, str]:
        upstream = serves_upstream(request.model, self.upstream_models or ())
        deployment, app_name = ((UPSTREAM_DEPLOYMENT, UPSTREAM_APP_NAME) if upstream
                                else (GENERATOR_DEPLOYMENT, GENERATOR_APP_NAME))
        return await self._handle(deployment, app_name), deployment

    async def _generate(self, request: GenerateRequest) -> GenerationResult:
        handle, deployment = await self._generation_handle(request)
        try:
            result: GenerationResult = await handle.generate.remote(request, time.time())
        except Exception as exc:
            raise classify(exc, self._retry_after_s, deployment) from exc
        return result

    async def _stream(self, request: GenerateRequest, on_delta: OnDelta) -> GenerationResult:
        """The deployment's ``generate_stream`` through a streaming handle call."""
        handle, deployment = await self._generation_handle(request)
        try:
            pieces = handle.options(stream=True).generate_stream.remote(request, time.time())
            async for piece in pieces:
                if isinstance(piece, GenerationResult):
                    return piece
                await on_delta(piece)
        except Exception as exc:
            raise classify(exc, self._retry_after_s, deployment) from exc
        raise classify(RuntimeError("the stream ended without a result"), self._retry_after_s,
                       deployment)
