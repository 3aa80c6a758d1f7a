"""The HTTP contract (status codes, error bodies) and the client's reading of it, without Ray.

The app under test is the real FastAPI app from ``clawstream.inference.api``; only the gateway
behind it (which in production calls Serve deployment handles) is replaced, and the
client talks to it through httpx's in-process ASGI transport.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from clawstream.inference.api import create_api
from clawstream.inference.backends.simulated import SimulatedBackend
from clawstream.inference.client import (
    InferenceBackendError,
    InferenceClient,
    InferenceOverloaded,
    InferenceTimeout,
    InferenceValidationError,
)
from clawstream.inference.errors import (
    BackendFailure,
    GenerationTimeout,
    InputRejected,
    NotReady,
    Overloaded,
)
from clawstream.inference.protocol import (
    ComponentHealth,
    EmbeddingResult,
    EmbedRequest,
    GenerateRequest,
    GenerationResult,
    HealthReport,
    ReplicaReport,
)
from clawstream.inference.scripted import Script

DEFAULT_MAX_TOKENS = 12

pytestmark = pytest.mark.asyncio(loop_scope="session")  # same loop as the async fixtures


class FakeGateway:
    """Answers like the deployments do, or raises the failure a test asks for."""

    def __init__(self) -> None:
        self.backend = SimulatedBackend(delay_ms=0)
        self.fail_with: Exception | None = None
        self.seen: list[Any] = []

    async def generate(self, request: GenerateRequest, received_at: float) -> GenerationResult:
        self.seen.append(request)
        if self.fail_with is not None:
            raise self.fail_with
        max_tokens = request.max_tokens or DEFAULT_MAX_TOKENS
        out = await self.backend.generate(
            request.messages, max_tokens, request.temperature, request.tools, request.tool_choice
        )
        return GenerationResult(
            text=out.text,
            model=self.backend.model_id,
            backend=self.backend.name,
            prompt_tokens=out.prompt_tokens,
            completion_tokens=out.completion_tokens,
            finish_reason=out.finish_reason,
            tool_calls=list(out.tool_calls),
            replica="fake#0",
            queue_ms=0.0,
            run_ms=0.1,
        )

    async def embed(self, request: EmbedRequest) -> EmbeddingResult:
        self.seen.append(request)
        if self.fail_with is not None:
            raise self.fail_with
        return EmbeddingResult(model="fake", dim=2, vectors=[[1.0, 0.0] for _ in request.texts])

    async def health(self) -> HealthReport:
        if self.fail_with is not None:
            raise self.fail_with
        component = ComponentHealth(model="fake", backend="fake")
        return HealthReport(status="ok", generation=component, embedding=component)

    async def replicas(self) -> ReplicaReport:
        return ReplicaReport(running={"clawstream-generator/generator": 3})


@pytest.fixture
def gateway() -> FakeGateway:
    return FakeGateway()


@pytest.fixture
async def http(gateway: FakeGateway) -> AsyncIterator[httpx.AsyncClient]:
    # raise_app_exceptions=False: Starlette re-raises unhandled errors after answering 500
    # so that servers log them; the answer is what this test is about.
    transport = httpx.ASGITransport(app=create_api(gateway), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://inference") as client:
        yield client


@pytest.fixture
def client(http: httpx.AsyncClient) -> InferenceClient:
    return InferenceClient("http://inference", http=http)


async def test_generate_round_trip(client: InferenceClient, gateway: FakeGateway) -> None:
    result = await client.generate([{"role": "user", "content": "hi"}])
    assert result.backend == "simulated"
    assert 1 <= result.completion_tokens <= DEFAULT_MAX_TOKENS
    assert gateway.seen[0].max_tokens is None  # the server, not the client, fills the default


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b'{"messages": []}',
        b'{"messages": [{"role": "robot", "content": "x"}]}',
        b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": -1}',
    ],
)
async def test_invalid_body_is_400_validation(
    http: httpx.AsyncClient, gateway: FakeGateway, payload: bytes
) -> None:
    response = await http.post(
        "/generate", content=payload, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"] == "validation"
    assert response.json()["detail"]
    assert gateway.seen == []  # refused before reaching a model


async def test_embed_invalid_body_is_400(http: httpx.AsyncClient) -> None:
    response = await http.post("/embed", json={"texts": []})
    assert response.status_code == 400
    assert response.json()["error"] == "validation"


@pytest.mark.parametrize(
    ("failure", "status", "kind"),
    [
        (InputRejected("prompt too long"), 400, "validation"),
        (BackendFailure("llama.cpp failed"), 500, "backend"),
        (RuntimeError("unclassified"), 500, "backend"),
        (Overloaded("queue full", retry_after_s=1.2), 503, "overloaded"),
        (GenerationTimeout("upstream silent"), 504, "timeout"),
    ],
)
async def test_failures_map_to_status_and_kind(
    http: httpx.AsyncClient, gateway: FakeGateway, failure: Exception, status: int, kind: str
) -> None:
    gateway.fail_with = failure
    response = await http.post("/generate", json={"messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == status
    assert response.json()["error"] == kind
    if status == 503:
        assert response.headers["retry-after"] == "2"  # rounded up, never earlier


async def test_health_not_ready_is_503(http: httpx.AsyncClient, gateway: FakeGateway) -> None:
    assert (await http.get("/health")).status_code == 200
    gateway.fail_with = NotReady("loading")
    response = await http.get("/health")
    assert response.status_code == 503
    assert response.json()["error"] == "not_ready"


async def test_the_replicas_route_reports_the_gateways_count(http: httpx.AsyncClient) -> None:
    response = await http.get("/replicas")
    assert response.status_code == 200
    assert response.json() == {"running": {"clawstream-generator/generator": 3}}


async def test_client_raises_by_kind(client: InferenceClient, gateway: FakeGateway) -> None:
    messages = [{"role": "user", "content": "x"}]
    gateway.fail_with = InputRejected("unknown model")
    with pytest.raises(InferenceValidationError) as rejected:
        await client.generate(messages, model="nope")
    assert not rejected.value.retryable
    assert rejected.value.status == 400
    assert rejected.value.detail == "unknown model"

    gateway.fail_with = Overloaded("queue full", retry_after_s=3)
    with pytest.raises(InferenceOverloaded) as overloaded:
        await client.generate(messages)
    assert overloaded.value.retryable
    assert overloaded.value.retry_after == 3.0

    gateway.fail_with = BackendFailure("boom")
    with pytest.raises(InferenceBackendError) as failed:
        await client.embed(["x"])
    assert failed.value.retryable
    assert failed.value.status == 500


async def test_client_validates_before_sending(
    client: InferenceClient, gateway: FakeGateway
) -> None:
    with pytest.raises(InferenceValidationError):
        await client.generate([{"role": "user", "content": "x"}], max_tokens=0)
    with pytest.raises(InferenceValidationError):
        await client.embed([])
    assert gateway.seen == []


async def test_the_models_own_routes_keep_the_contract(gateway: FakeGateway) -> None:
    """The surfaces Serve mounts on the model replicas themselves (``/model``,
    ``/embedding``): the same statuses, bodies and Retry-After as the ingress."""
    from clawstream.inference.api import create_embedding_api, create_model_api

    model_api = create_model_api(gateway.generate)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=model_api),
                                 base_url="http://generator") as http:
        ok = await http.post("/generate", json={"messages": [{"role": "user", "content": "x"}]})
        assert ok.status_code == 200 and ok.json()["backend"] == "simulated"
        bad = await http.post("/generate", json={"messages": []})
        assert bad.status_code == 400 and bad.json()["error"] == "validation"
        gateway.fail_with = Overloaded("queue full", retry_after_s=2.5)
        shed = await http.post("/generate",
                               json={"messages": [{"role": "user", "content": "x"}]})
        assert shed.status_code == 503 and shed.headers["retry-after"] == "3"
        assert (await http.post("/faults", json={"match": "x"})).status_code == 404
    gateway.fail_with = None
    embed_api = create_embedding_api(gateway.embed)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=embed_api),
                                 base_url="http://embedder") as http:
        vectors = await http.post("/embed", json={"texts": ["a", "b"]})
        assert vectors.status_code == 200 and len(vectors.json()["vectors"]) == 2
        assert (await http.post("/embed", json={"texts": []})).status_code == 400


async def test_timeout_reaches_the_client_as_retryable(
    client: InferenceClient, gateway: FakeGateway
) -> None:
    gateway.fail_with = GenerationTimeout("upstream silent")
    with pytest.raises(InferenceTimeout) as timed_out:
        await client.generate([{"role": "user", "content": "x"}])
    assert timed_out.value.retryable
    assert timed_out.value.status == 504


async def test_client_sends_tools_and_reads_tool_calls(
    client: InferenceClient, gateway: FakeGateway
) -> None:
    tool = {"name": "lookup", "description": "Find a thing.",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}
    result = await client.generate(
        [{"role": "user", "content": "find it"}], tools=[tool], tool_choice="required"
    )
    sent = gateway.seen[0]
    assert [t.name for t in sent.tools] == ["lookup"] and sent.tool_choice == "required"
    assert result.finish_reason == "tool_calls"
    assert [(c.name, c.arguments) for c in result.tool_calls] == [("lookup", "{}")]


async def test_script_route_exists_only_when_given(gateway: FakeGateway) -> None:
    scripts: list[Script] = []

    async def add_script(script: Script) -> None:
        scripts.append(script)

    body = {"marker": "mark-1234", "turns": [{"text": "hi"}]}
    for add, status in ((None, 404), (add_script, 204)):
        transport = httpx.ASGITransport(app=create_api(gateway, None, add))
        async with httpx.AsyncClient(transport=transport, base_url="http://i") as http:
            assert (await http.post("/script", json=body)).status_code == status
            bad = await http.post("/script", json={"marker": "mark-1234", "turns": [{}]})
            assert bad.status_code == (404 if add is None else 400)
    assert [s.marker for s in scripts] == ["mark-1234"]


async def test_client_takes_each_models_own_route(gateway: FakeGateway) -> None:
    """Knowing the pools' upstream models, the client posts a request for one of them to
    the upstream deployment's route and every other to the local generator's: no ingress
    hop either way. Without them, a named model goes to the ingress, which routes it."""
    paths: list[str] = []

    async def record(request: httpx.Request) -> None:
        paths.append(request.url.path)

    transport = httpx.ASGITransport(app=create_api(gateway))
    messages = [{"role": "user", "content": "x"}]
    for upstreams, expected in (({"remote-a"}, ["/model/generate", "/model/generate",
                                                "/upstream/generate"]),
                                (None, ["/model/generate", "/generate", "/generate"])):
        paths.clear()
        async with httpx.AsyncClient(transport=transport, base_url="http://i",
                                     event_hooks={"request": [record]}) as http:
            client = InferenceClient("http://i", http=http, upstream_models=upstreams)
            for model in (None, "simulated-echo", "remote-a"):
                assert (await client.generate(messages, model=model)).backend == "simulated"
        assert paths == expected
