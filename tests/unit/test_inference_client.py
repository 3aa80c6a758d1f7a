"""How the client classifies transport-level outcomes the app itself never produces."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from clawstream.inference.client import (
    InferenceBackendError,
    InferenceClient,
    InferenceError,
    InferenceOverloaded,
    InferenceTimeout,
    parse_retry_after,
)

MESSAGES = [{"role": "user", "content": "x"}]


def client_for(handler: Callable[[httpx.Request], httpx.Response]) -> InferenceClient:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://x")
    return InferenceClient("http://x", http=http)


def raising(exc: Exception) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


async def test_read_timeout_is_inference_timeout() -> None:
    client = client_for(raising(httpx.ReadTimeout("slow")))
    with pytest.raises(InferenceTimeout) as info:
        await client.generate(MESSAGES)
    assert info.value.retryable


async def test_unreachable_app_is_a_retryable_backend_error() -> None:
    client = client_for(raising(httpx.ConnectError("refused")))
    with pytest.raises(InferenceBackendError) as info:
        await client.embed(["x"])
    assert info.value.retryable
    assert info.value.status is None


@pytest.mark.parametrize(
    ("status", "headers", "kind", "retry_after"),
    [
        (429, {"Retry-After": "7"}, InferenceOverloaded, 7.0),
        (503, {}, InferenceOverloaded, None),  # Serve's own plain-text 503, no header
        (408, {}, InferenceTimeout, None),  # Serve's request_timeout_s
        (504, {}, InferenceTimeout, None),
        (404, {}, InferenceBackendError, None),  # app not deployed
        (502, {}, InferenceBackendError, None),
    ],
)
async def test_status_mapping(
    status: int, headers: dict[str, str], kind: type[InferenceError], retry_after: float | None
) -> None:
    client = client_for(lambda request: httpx.Response(status, headers=headers, text="plain"))
    with pytest.raises(kind) as info:
        await client.generate(MESSAGES)
    assert info.value.retryable
    assert info.value.status == status
    if isinstance(info.value, InferenceOverloaded):
        assert info.value.retry_after == retry_after


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("5", 5.0),
        (" 0 ", 0.0),
        ("-3", 0.0),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # a date in the past: retry now
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header) == expected


def test_parse_retry_after_http_date_in_the_future() -> None:
    now = 1_445_412_400.0  # 2015-10-21 07:26:40 UTC
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=now) == pytest.approx(80.0)
