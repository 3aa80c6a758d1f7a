"""A real OpenAI-compatible server for the upstream backend's tests, and a fault proxy.

The server is llama-cpp-python's own (``python -m llama_cpp.server``, its ``[server]``
extra) with the shipped SmolLM2 GGUF and the ``chatml-function-calling`` chat format, so
tool calls really go through an upstream's function-calling path. The proxy sits between
the Serve app and that server: it forwards requests as they are, remembers what it saw
(model, Authorization header), and answers the next few with an error on demand (429 with
Retry-After, as a provider's rate limit does).

Both listen on fixed test ports moved by ``CLAWSTREAM_PORT_OFFSET``; the test stack's
``remote`` pool points at the proxy (tests/conftest.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from clawstream.inference.model_files import smollm2_gguf_path

_OFFSET = int(os.environ.get("CLAWSTREAM_PORT_OFFSET", "0"))
PROXY_PORT = 28100 + _OFFSET
SERVER_PORT = 28101 + _OFFSET
UPSTREAM_MODEL = "smollm2-server"
"""The name the llama.cpp server serves the GGUF under (its --model_alias)."""
POOL_MODEL = "remote-smollm2"
"""The id the test stack's ``remote`` pool serves it under, through the Serve app."""
KEY_ENV = "TEST_UPSTREAM_API_KEY"
KEY = "sk-clawstream-test-0c1d2e3f"
READY_TIMEOUT_S = 90.0


def pool_spec() -> dict[str, Any]:
    """The ``remote`` pool of the test stack, as CLAWSTREAM_POOLS carries it."""
    return {
        "capacity_tokens_per_s": 400.0, "rank": 2, "backend_model": POOL_MODEL,
        "upstream": {"base_url": f"http://127.0.0.1:{PROXY_PORT}", "model": UPSTREAM_MODEL,
                     "api_key_env": KEY_ENV, "timeout_s": 120.0},
    }


@dataclass
class FaultProxy:
    """What the proxy saw, and the failures it still owes."""

    seen: list[dict[str, Any]] = field(default_factory=list)
    _faults: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def fail_next(self, status: int, times: int = 1, retry_after: str | None = None) -> None:
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        with self._lock:
            self._faults.extend([(status, headers)] * times)

    def _take_fault(self) -> tuple[int, dict[str, str]] | None:
        with self._lock:
            return self._faults.pop(0) if self._faults else None

    def app(self, target: str) -> FastAPI:
        api = FastAPI()
        forward = httpx.AsyncClient(base_url=target, timeout=120.0)

        @api.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            body = await request.json()
            self.seen.append({"authorization": request.headers.get("authorization"),
                              "body": body})
            fault = self._take_fault()
            if fault is not None:
                status, headers = fault
                return Response(
                    status_code=status, headers=headers, media_type="application/json",
                    content=b'{"error": {"message": "injected by the test proxy", '
                            b'"type": "rate_limit_exceeded"}}')
            if body.get("stream"):  # passed through as it comes
                upstream = await forward.send(forward.build_request(
                    "POST", "/v1/chat/completions", json=body), stream=True)
                return StreamingResponse(upstream.aiter_raw(), status_code=upstream.status_code,
                                         media_type=upstream.headers.get("content-type"),
                                         background=BackgroundTask(upstream.aclose))
            answer = await forward.post("/v1/chat/completions", json=body)
            return Response(status_code=answer.status_code, content=answer.content,
                            media_type="application/json")

        return api


def _wait_ready(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"llama.cpp server exited ({server.returncode}): "
                               f"{log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/v1/models", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"llama.cpp server not ready after {READY_TIMEOUT_S} s: "
                       f"{log.read_text()[-2000:]}")


@contextmanager
def llama_server(log_dir: Path) -> Iterator[str]:
    """llama-cpp-python's OpenAI-compatible server on SERVER_PORT; yields its base URL."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / "llama-server.log"
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf_path()),
            "--model_alias", UPSTREAM_MODEL, "--chat_format", "chatml-function-calling",
            "--host", "127.0.0.1", "--port", str(SERVER_PORT), "--n_ctx", "2048",
            "--n_threads", "1"]
    with log.open("wb") as out:
        server = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{SERVER_PORT}"
    try:
        _wait_ready(url, server, log)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@contextmanager
def fault_proxy(target: str) -> Iterator[FaultProxy]:
    """The proxy on PROXY_PORT in a thread of the test process, forwarding to ``target``."""
    proxy = FaultProxy()
    config = uvicorn.Config(proxy.app(target), host="127.0.0.1", port=PROXY_PORT,
                            log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="fault-proxy", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"fault proxy did not start on port {PROXY_PORT}")
        time.sleep(0.02)
    try:
        yield proxy
    finally:
        server.should_exit = True
        thread.join(timeout=10)
