"""Limits on what a client sends, before any handler runs (pure ASGI, so nothing is
buffered first): a body larger than ``gateway_max_body_bytes`` is refused with 413 (by its
Content-Length, or as it streams in), and a client that takes longer than
``gateway_body_timeout_s`` to send its body gets 408 instead of holding a slot."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyTooLarge(Exception):
    pass


class BodyTimeout(Exception):
    pass


async def _reply(send: Send, status: int, message: str, code: str) -> None:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error",
                                 "param": None, "code": code}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class RequestLimits:
    def __init__(self, app: ASGIApp, max_body_bytes: int, body_timeout_s: float) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_large = int(value) > self.max_body_bytes
                except ValueError:
                    await _reply(send, 400, "invalid Content-Length", "invalid_header")
                    return
                if too_large:
                    await _reply(send, 413, f"the body is larger than {self.max_body_bytes} "
                                 "bytes", "request_too_large")
                    return
        received = 0
        started = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout_s

        body_done = False

        async def limited_receive() -> Message:
            # Only the body is timed: once it is in, a receive waits for the client's
            # disconnect (Starlette's streaming responses listen for it from their start,
            # possibly before the response starts), for as long as the response lasts.
            nonlocal received, body_done
            timed = not (started or body_done)
            message = await _within(receive(), deadline, loop) if timed else await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge
                body_done = not message.get("more_body", False)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _reply(send, 413, f"the body is larger than {self.max_body_bytes} bytes",
                             "request_too_large")
        except BodyTimeout:
            if not started:
                await _reply(send, 408, "the request body did not arrive in time",
                             "request_timeout")


async def _within(pending: Awaitable[Message], deadline: float,
                  loop: asyncio.AbstractEventLoop) -> Message:
    try:
        return await asyncio.wait_for(pending, max(0.0, deadline - loop.time()))
    except TimeoutError:
        raise BodyTimeout from None
