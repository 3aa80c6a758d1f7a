"""Errors as OpenAI clients expect them: ``{"error": {message, type, param, code}}``.

The official clients raise by status code (400 BadRequestError, 401 AuthenticationError,
403 PermissionDeniedError, 404 NotFoundError, 429 RateLimitError, 5xx InternalServerError)
and read ``Retry-After``/``retry-after-ms`` for their retries, so the status, the body and
those headers are the contract; the native API answers errors the same way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from clawstream import metrics
from clawstream.gateway.limits import BodyTimeout, BodyTooLarge


class ApiError(Exception):
    """An error answer: raised anywhere in a request, rendered by the app's handler."""

    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None,
                 headers: Mapping[str, str] | None = None,
                 extra: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code, **self.extra}}

    def response(self) -> JSONResponse:
        metrics.GATEWAY_REFUSALS.labels(str(self.status), self.code or "none").inc()
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def retry_headers(retry_after_s: float) -> dict[str, str]:
    """``Retry-After`` in whole seconds (RFC 9110) and ``retry-after-ms``, which the OpenAI
    clients read first, so a sub-second hint is not rounded up to a second."""
    seconds = max(0.0, retry_after_s)
    return {"Retry-After": str(max(1, math.ceil(seconds))),
            "retry-after-ms": str(max(1, math.ceil(seconds * 1000)))}


def bad_request(message: str, param: str | None = None, code: str = "invalid_value"
                ) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def not_found(message: str, code: str = "not_found", param: str | None = None) -> ApiError:
    return ApiError(404, message, code=code, param=param)


def overloaded(message: str, retry_after_s: float = 1.0) -> ApiError:
    return ApiError(503, message, type_="server_error", code="overloaded",
                    headers=retry_headers(retry_after_s))


def rate_limited(message: str, retry_after_s: float | None, code: str = "rate_limit_exceeded",
                 request_id: str | None = None) -> ApiError:
    headers = retry_headers(retry_after_s) if retry_after_s else {}
    extra = {"request_id": request_id} if request_id else {}
    return ApiError(429, message, type_="requests", code=code, headers=headers, extra=extra)


def param_of(loc: Sequence[int | str]) -> str | None:
    """Pydantic's error location as the field path a client reads: ``messages[0].role``."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "header", "path"):
        parts = parts[1:]
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith("function-") or part in ("str", "list[...]"):
            continue  # pydantic's union/validator branch names, not fields
        else:
            out += f".{part}" if out else part
    return out or None


def install(app: FastAPI) -> None:
    """Every error the app can produce, including FastAPI's own, in the OpenAI shape."""

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        if first.get("type") == "json_invalid":
            return bad_request("the body is not valid JSON", code="invalid_json").response()
        param = param_of(first.get("loc", ()))
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
        return bad_request(message, param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI turns any failure while reading the body into a 400; the limits'
        # own reasons are kept.
        if isinstance(exc.__cause__, BodyTooLarge):
            return ApiError(413, "the body is too large", code="request_too_large").response()
        if isinstance(exc.__cause__, BodyTimeout):
            return ApiError(408, "the request body did not arrive in time",
                            code="request_timeout").response()
        codes = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
        return ApiError(exc.status_code, str(exc.detail),
                        code=codes.get(exc.status_code)).response()

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        return ApiError(500, f"internal error ({type(exc).__name__})", type_="server_error",
                        code="internal_error").response()
