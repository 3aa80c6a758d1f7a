"""The gateway application: ``create_app()`` builds it (uvicorn's factory), its lifespan
starts the process's publisher, answer index, recorder and lag monitor, and stops them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from clawstream.config import Settings, get_settings
from clawstream.gateway import errors, native, openai_edge
from clawstream.gateway.limits import RequestLimits
from clawstream.gateway.service import Gateway


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
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

    app.add_middleware(RequestLimits, max_body_bytes=settings.gateway_max_body_bytes,
                       body_timeout_s=settings.gateway_body_timeout_s)
    return app
