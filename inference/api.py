"""The HTTP surface: routes, validation and the mapping from failure kind to status code.

It is built around a :class:`ModelGateway` rather than Ray handles so that the HTTP
contract (400 vs 500 vs 503, error bodies, defaults) is tested without a cluster; the
Serve ingress in :mod:`clawstream.inference.app` supplies a gateway backed by deployment handles.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from clawstream.inference.errors import (
    BackendFailure,
    GenerationTimeout,
    InputRejected,
    NotReady,
    Overloaded,
)
from clawstream.inference.faults import FaultRule
from clawstream.inference.protocol import (
    EMBED_PATH,
    GENERATE_PATH,
    REPLICAS_PATH,
    STREAM_SUFFIX,
    UPSTREAM_GENERATE_PATH,
    EmbeddingResult,
    EmbedRequest,
    ErrorBody,
    GenerateRequest,
    GenerationResult,
    HealthReport,
    ReplicaReport,
)
from clawstream.inference.scripted import Script


class ModelGateway(Protocol):
    async def generate(self, request: GenerateRequest, received_at: float) -> GenerationResult:
        """``received_at`` (time.time()) lets the replica report how long the call queued."""
        ...

    async def embed(self, request: EmbedRequest) -> EmbeddingResult: ...

    async def health(self) -> HealthReport:
        """Raise :class:`NotReady` while a model deployment cannot answer yet."""
        ...

    async def replicas(self) -> ReplicaReport: ...


def _error(status: int, body: ErrorBody, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content=body.model_dump(mode="json"), headers=headers)


def install_error_contract(api: FastAPI) -> None:
    """The status code and JSON body of every failure kind, on any of the app's HTTP
    surfaces (the ingress and the models' own routes answer alike)."""

    @api.exception_handler(RequestValidationError)
    async def _invalid_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI answers 422 by default; the contract is 400 so that callers have a single
        # "never retry" status. ``ctx`` may hold exception objects, hence the jsonable dump.
        detail = [
            {"loc": list(err.get("loc", ())), "msg": err.get("msg"), "type": err.get("type")}
            for err in exc.errors()
        ]
        return _error(400, ErrorBody(error="validation", detail=detail))

    @api.exception_handler(InputRejected)
    async def _rejected(_: Request, exc: InputRejected) -> JSONResponse:
        return _error(400, ErrorBody(error="validation", detail=str(exc)))

    @api.exception_handler(Overloaded)
    async def _overloaded(_: Request, exc: Overloaded) -> JSONResponse:
        headers = None
        if exc.retry_after_s is not None:
            headers = {"Retry-After": str(max(0, math.ceil(exc.retry_after_s)))}
        return _error(503, ErrorBody(error="overloaded", detail=str(exc)), headers)

    @api.exception_handler(BackendFailure)
    async def _backend(_: Request, exc: BackendFailure) -> JSONResponse:
        return _error(500, ErrorBody(error="backend", detail=str(exc)))

    @api.exception_handler(GenerationTimeout)
    async def _timeout(_: Request, exc: GenerationTimeout) -> JSONResponse:
        return _error(504, ErrorBody(error="timeout", detail=str(exc)))

    @api.exception_handler(NotReady)
    async def _not_ready(_: Request, exc: NotReady) -> JSONResponse:
        return _error(503, ErrorBody(error="not_ready", detail=str(exc)))

    @api.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        # Anything the gateway did not classify is the backend's fault, and retryable.
        return _error(500, ErrorBody(error="backend", detail=f"{type(exc).__name__}: {exc}"))


Generate = Callable[[GenerateRequest, float], Awaitable[GenerationResult]]
AddFault = Callable[[FaultRule], Awaitable[None]]
AddScript = Callable[[Script], Awaitable[None]]


Stream = Callable[[GenerateRequest, float], AsyncIterator[str | GenerationResult]]
"""A streamed generation: text pieces, then the result."""


def failure_kind(exc: BaseException) -> str:
    """The :class:`ErrorBody` kind of a failure (the same mapping as the status codes)."""
    if isinstance(exc, InputRejected):
        return "validation"
    if isinstance(exc, Overloaded):
        return "overloaded"
    if isinstance(exc, GenerationTimeout):
        return "timeout"
    return "backend"


async def _ndjson(first: str | GenerationResult,
                  rest: AsyncIterator[str | GenerationResult]) -> AsyncIterator[str]:
    """The lines of a streamed generation; a failure after the first line is a line too
    (the status code is sent by then)."""
    item = first
    while True:
        if isinstance(item, GenerationResult):
            yield json.dumps({"result": item.model_dump(mode="json")}) + "\n"
            return
        yield json.dumps({"delta": item}) + "\n"
        try:
            item = await anext(rest)
        except StopAsyncIteration:
            yield json.dumps({"error": "backend", "detail": "the stream ended early"}) + "\n"
            return
        except Exception as exc:
            yield json.dumps({"error": failure_kind(exc), "detail": str(exc),
                              "retry_after_s": getattr(exc, "retry_after_s", None)}) + "\n"
            return


def create_model_api(generate: Generate, paths: tuple[str, ...] = ("/generate",),
                     stream: Stream | None = None) -> FastAPI:
    """POST /generate around one ``generate`` callable: a generation replica's own HTTP
    surface, which Serve mounts under ``/model`` (the local model) or ``/upstream`` (the
    pools' upstream models). Test fixtures are registered through the ingress, which hands
    them to every generation deployment."""
    api = FastAPI(title="clawstream generation", docs_url=None, redoc_url=None)
    install_error_contract(api)

    async def generate_route(body: GenerateRequest) -> GenerationResult:
        return await generate(body, time.time())

    for path in paths:
        api.post(path, response_model=GenerationResult)(generate_route)
    if stream is not None:
        streamer = stream

        async def stream_route(body: GenerateRequest) -> StreamingResponse:
            """The first piece is awaited before the response starts, so a request that
            fails at once (validation, overload, a fault) still gets its status code."""
            items = streamer(body, time.time())
            first = await anext(items)
            return StreamingResponse(_ndjson(first, items), media_type="application/x-ndjson")

        for path in paths:
            api.post(path + STREAM_SUFFIX, response_class=StreamingResponse)(stream_route)
    return api


Embed = Callable[[EmbedRequest], Awaitable[EmbeddingResult]]


def add_embed_route(api: FastAPI, embed: Embed, paths: tuple[str, ...] = ("/embed",)) -> None:
    async def embed_route(body: EmbedRequest) -> EmbeddingResult:
        return await embed(body)

    for path in paths:
        api.post(path, response_model=EmbeddingResult)(embed_route)


def create_embedding_api(embed: Embed) -> FastAPI:
    """POST /embed around one ``embed`` callable: the embedder replica's own HTTP surface,
    which Serve mounts under ``/embedding``."""
    api = FastAPI(title="clawstream embeddings", docs_url=None, redoc_url=None)
    install_error_contract(api)
    add_embed_route(api, embed)
    return api


def create_api(gateway: ModelGateway, add_fault: AddFault | None = None,
               add_script: AddScript | None = None) -> FastAPI:
    """The ingress's surface: /generate (routed by model), /embed, /health, /replicas; on
    a test stack ``add_fault`` (POST /faults) and ``add_script`` (the scripted fixture,
    POST /script), None in production. The models' own paths (:data:`GENERATE_PATH`,
    :data:`UPSTREAM_GENERATE_PATH`, :data:`EMBED_PATH`), which Serve routes to their
    replicas directly, answer here too, so the in-process app serves a client unchanged."""
    api = create_model_api(gateway.generate,
                           paths=("/generate", GENERATE_PATH, UPSTREAM_GENERATE_PATH))
    api.title = "clawstream inference"
    add_embed_route(api, gateway.embed, paths=("/embed", EMBED_PATH))

    @api.get("/health", response_model=HealthReport)
    async def health() -> HealthReport:
        return await gateway.health()

    @api.get(REPLICAS_PATH, response_model=ReplicaReport)
    async def replicas() -> ReplicaReport:
        return await gateway.replicas()

    if add_fault is not None:
        on_fault = add_fault

        @api.post("/faults", status_code=204)
        async def register_fault(rule: FaultRule) -> None:
            await on_fault(rule)

    if add_script is not None:
        on_script = add_script

        @api.post("/script", status_code=204)
        async def register_script(script: Script) -> None:
            await on_script(script)

    return api
