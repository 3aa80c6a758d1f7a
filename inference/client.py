"""Async client for the inference app, for the dispatcher and the tests.

It turns HTTP outcomes into exception types that carry the retry decision, so callers
write ``except InferenceError as e: if e.retryable: ...`` and never parse status codes.
Imports only httpx and pydantic: no Ray, torch or llama.cpp in the caller's process.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from clawstream.inference.protocol import (
    EMBED_PATH,
    INGRESS_GENERATE_PATH,
    STREAM_SUFFIX,
    ChatMessage,
    EmbeddingResult,
    EmbedRequest,
    GenerateRequest,
    GenerationResult,
    HealthReport,
    ToolCall,
    ToolChoice,
    ToolFunction,
    generate_path,
)

__all__ = [
    "ChatMessage",
    "EmbeddingResult",
    "GenerationResult",
    "HealthReport",
    "InferenceBackendError",
    "InferenceClient",
    "InferenceError",
    "InferenceOverloaded",
    "InferenceTimeout",
    "InferenceValidationError",
    "ToolCall",
    "ToolFunction",
]

DEFAULT_TIMEOUT_S = 60.0


class InferenceError(Exception):
    """Base of every client error; ``retryable`` says whether another attempt may succeed."""

    retryable: bool = True

    def __init__(self, message: str, *, status: int | None = None, detail: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


class InferenceValidationError(InferenceError):
    """400: the request itself is wrong; retrying sends the same wrong request."""

    retryable = False


class InferenceOverloaded(InferenceError):
    """503/429: the app shed load; wait ``retry_after`` seconds (when sent) and retry."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        detail: Any = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, detail=detail)
        self.retry_after = retry_after


class InferenceBackendError(InferenceError):
    """5xx other than 503, an unexpected status, or the app unreachable."""


class InferenceUnreachable(InferenceBackendError):
    """No connection to the app at all (refused, reset, DNS): our infrastructure is away,
    not the model failing."""


class InferenceTimeout(InferenceError):
    """No answer in time (client timeout, or the server's own 408/504)."""


MessageLike = ChatMessage | Mapping[str, object]
ToolLike = ToolFunction | Mapping[str, object]
_Request = TypeVar("_Request", bound=BaseModel)
OnDelta = Callable[[str], Awaitable[None]]


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """RFC 9110 Retry-After: delay-seconds or an HTTP-date; None when absent or garbled."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _detail(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict) and "detail" in body:
        return body["detail"]
    return body


def error_for_response(response: httpx.Response) -> InferenceError:
    """The exception for a non-2xx answer; exposed so other HTTP callers classify alike."""
    status = response.status_code
    detail = _detail(response)
    message = f"inference {response.request.method} {response.request.url.path}: HTTP {status}"
    if status in (400, 422):
        return InferenceValidationError(f"{message}: {detail}", status=status, detail=detail)
    if status in (429, 503):
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        return InferenceOverloaded(message, status=status, detail=detail, retry_after=retry_after)
    if status in (408, 504):
        return InferenceTimeout(message, status=status, detail=detail)
    return InferenceBackendError(f"{message}: {detail}", status=status, detail=detail)


class InferenceClient:
    """One connection pool to the app; use as ``async with InferenceClient(url) as c``.

    ``timeout`` bounds a whole call. Pass ``http`` to share a pool (or a test transport);
    a client passed in is not closed by :meth:`aclose`.

    ``upstream_models``: the model ids the pools' OpenAI-compatible upstreams serve
    (:func:`clawstream.config.upstream_models` of the settings' pools). Knowing them, the
    client sends each generation straight to its model's route (``/model/generate`` or
    ``/upstream/generate``, no ingress hop); without them (None) a request naming a model
    goes through the ingress, which routes it (:func:`protocol.generate_path`).
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        http: httpx.AsyncClient | None = None,
        upstream_models: Collection[str] | None = None,
    ) -> None:
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(base_url=base_url, timeout=timeout)
        self._timeout = timeout
        self.upstream_models = None if upstream_models is None else frozenset(upstream_models)

    async def __aenter__(self) -> InferenceClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def generate(
        self,
        messages: Sequence[MessageLike],
        *,
        max_tokens: int | None = None,
        temperature: float = 0.0,
        model: str | None = None,
        tools: Sequence[ToolLike] = (),
        tool_choice: ToolChoice = "auto",
        on_delta: OnDelta | None = None,
        top_p: float | None = None,
        stop: Sequence[str] = (),
        seed: int | None = None,
    ) -> GenerationResult:
        """Raises InferenceValidationError locally, before any I/O, for a malformed request.
        The answer is text and/or ``tool_calls`` (``finish_reason`` "tool_calls").

        With ``on_delta`` the answer is streamed: it is awaited on each piece of text as the
        model generates it (the pieces join to the result's text; a backend that answers
        whole, or an answer of tool calls, gives one piece or none)."""
        request = _validated(
            GenerateRequest,
            messages=list(messages),
            max_tokens=max_tokens,
            temperature=temperature,
            model=model,
            tools=list(tools),
            tool_choice=tool_choice,
            top_p=top_p,
            stop=list(stop),
            seed=seed,
        )
        if on_delta is not None:
            return await self._stream(request, on_delta)
        return await self._generate(request)

    async def _stream(self, request: GenerateRequest, on_delta: OnDelta) -> GenerationResult:
        """The streamed call on the model's own route (the ingress does not stream: a named
        model the client cannot route itself is answered whole)."""
        path = generate_path(request.model, self.upstream_models)
        if path == INGRESS_GENERATE_PATH:
            return await self._generate(request)
        path += STREAM_SUFFIX
        try:
            async with self._http.stream("POST", path, json=request.model_dump(mode="json"),
                                         timeout=self._timeout) as response:
                if not response.is_success:
                    await response.aread()
                    raise error_for_response(response)
                async for line in response.aiter_lines():
                    if not line:
                        continue
                    item = json.loads(line)
                    if "delta" in item:
                        await on_delta(str(item["delta"]))
                    elif "result" in item:
                        return GenerationResult.model_validate(item["result"])
                    else:
                        raise _stream_error(path, item)
        except httpx.TimeoutException as exc:
            raise InferenceTimeout(f"inference POST {path}: {type(exc).__name__}") from exc
        except httpx.TransportError as exc:
            raise InferenceUnreachable(f"inference POST {path}: {type(exc).__name__}: {exc}"
                                       ) from exc
        raise InferenceBackendError(f"inference POST {path}: the stream ended without a result")

    async def _generate(self, request: GenerateRequest) -> GenerationResult:
        """The call itself, for a validated request (a subclass may go another way)."""
        path = generate_path(request.model, self.upstream_models)
        data = await self._post(path, request.model_dump(mode="json"))
        return GenerationResult.model_validate(data)

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return (await self.embed_result(texts)).vectors

    async def embed_result(self, texts: Sequence[str]) -> EmbeddingResult:
        """Like :meth:`embed`, with the model id (embedding cache keys include it)."""
        request = _validated(EmbedRequest, texts=list(texts))
        data = await self._post(EMBED_PATH, request.model_dump(mode="json"))
        return EmbeddingResult.model_validate(data)

    async def health(self) -> HealthReport:
        return HealthReport.model_validate(await self._send("GET", "/health", None))

    async def _post(self, path: str, payload: dict[str, Any]) -> Any:
        return await self._send("POST", path, payload)

    async def _send(self, method: str, path: str, payload: dict[str, Any] | None) -> Any:
        try:
            response = await self._http.request(method, path, json=payload, timeout=self._timeout)
        except httpx.TimeoutException as exc:
            raise InferenceTimeout(f"inference {method} {path}: {type(exc).__name__}") from exc
        except httpx.TransportError as exc:
            raise InferenceUnreachable(
                f"inference {method} {path}: {type(exc).__name__}: {exc}"
            ) from exc
        except httpx.HTTPError as exc:
            raise InferenceBackendError(
                f"inference {method} {path}: {type(exc).__name__}: {exc}"
            ) from exc
        if response.is_success:
            return response.json()
        raise error_for_response(response)


def _stream_error(path: str, item: dict[str, Any]) -> InferenceError:
    """The exception for an ``{"error": kind}`` line of a stream that had started."""
    message = f"inference POST {path}: {item.get('error')}: {item.get('detail')}"
    kind = item.get("error")
    if kind == "validation":
        return InferenceValidationError(message, detail=item.get("detail"))
    if kind == "overloaded":
        return InferenceOverloaded(message, detail=item.get("detail"),
                                   retry_after=item.get("retry_after_s"))
    if kind == "timeout":
        return InferenceTimeout(message, detail=item.get("detail"))
    return InferenceBackendError(message, detail=item.get("detail"))


def _validated(schema: type[_Request], **fields: Any) -> _Request:
    try:
        return schema.model_validate(fields)
    except ValidationError as exc:
        raise InferenceValidationError(
            f"invalid {schema.__name__}: {exc}",
            detail=exc.errors(include_url=False, include_context=False),
        ) from exc
