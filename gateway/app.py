"""The gateway application: ``create_app()`` builds it (uvicorn's factory), its lifespan
starts the process's publisher, answer index, recorder and lag monitor, and stops them."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clawstream import metrics
from clawstream.config import Settings, get_settings
from clawstream.gateway import errors, native, openai_edge
from clawstream.gateway.limits import RequestLimits
from clawstream.gateway.service import Gateway
from clawstream.streams import kafka_access
from clawstream.streams.schema_registry import bind_settings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus-client's own switch: set (by ``gateway.main``) when uvicorn runs several
processes behind the port."""


def scrape() -> bytes:
    """This process's metrics, or every gateway process's when they share a folder."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


class Timed:
    """Times every HTTP exchange to its last body byte (a stream included), by route
    template: a plain ASGI middleware, since Starlette's ``BaseHTTPMiddleware`` would
    buffer streamed answers through a queue."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        code = "500"

        async def sending(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = str(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            # The route's template, not the path: ids in paths must not become labels.
            route = getattr(scope.get("route"), "path", "unmatched")
            metrics.HTTP_LATENCY.labels(route, scope["method"], code).observe(
                time.perf_counter() - t0)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        bind_settings(settings)  # the requests it publishes: the registry's wire format
        kafka_access.bind(settings)  # the gateway's role, from its own secret file
        gateway = Gateway(settings)
        app.state.gateway = gateway
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    app = FastAPI(title="clawstream gateway", version="1", lifespan=lifespan,
                  description="Native request API and an OpenAI-compatible edge for "
                  "clawstream agents.")
    errors.install(app)
    app.include_router(native.router)
    app.include_router(openai_edge.router)

    @app.get("/ready", include_in_schema=False)
    async def ready() -> JSONResponse:
        gateway: Gateway = app.state.gateway
        ok = gateway.healthy
        return JSONResponse({"ready": ok, "waiting": gateway.index.waiting,
                             "request_lag": gateway.lag.lag}, status_code=200 if ok else 503)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(scrape(), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(Timed)
    app.add_middleware(RequestLimits, max_body_bytes=settings.gateway_max_body_bytes,
                       body_timeout_s=settings.gateway_body_timeout_s)
    return app
