"""The deployed Serve app with the real models (SmolLM2 GGUF via llama.cpp, MiniLM).

Needs the ``stack`` fixture (tests/conftest.py): Settings whose Serve app is up.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator

import httpx
import pytest

from clawstream.config import Settings
from clawstream.inference.client import (
    GenerationResult,
    InferenceClient,
    InferenceError,
    InferenceOverloaded,
    InferenceValidationError,
)
from clawstream.inference.config import InferenceConfig
from clawstream.inference.model_files import EMBEDDING_DIM, EMBEDDING_MODEL_ID, GENERATION_MODEL_ID

# Fixtures live on the session loop (pyproject: asyncio_default_fixture_loop_scope); the tests
# must run on it too, or the client's connections outlive the loop they were opened on.
pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

MESSAGES = [
    {"role": "system", "content": "You are a concise assistant."},
    {"role": "user", "content": "Name three things a message queue is good for."},
]


@pytest.fixture
async def client(stack: Settings) -> AsyncIterator[InferenceClient]:
    async with InferenceClient(stack.serve_url, timeout=120.0) as inference:
        yield inference


async def test_health_names_both_real_models(client: InferenceClient) -> None:
    report = await client.health()
    assert report.status == "ok"
    assert report.generation is not None and report.embedding is not None
    assert (report.generation.model, report.generation.backend) == (
        GENERATION_MODEL_ID,
        "llama_cpp",
    )
    assert report.embedding.model == EMBEDDING_MODEL_ID


async def test_greedy_generation_is_reproducible(client: InferenceClient) -> None:
    first = await client.generate(MESSAGES, max_tokens=48, temperature=0.0)
    second = await client.generate(MESSAGES, max_tokens=48, temperature=0.0)
    assert first.text.strip()
    assert first.text == second.text
    assert (first.model, first.backend) == (GENERATION_MODEL_ID, "llama_cpp")
    assert first.prompt_tokens > 0
    assert 0 < first.completion_tokens <= 48
    assert first.run_ms > 0
    assert first.replica.startswith("generator#")


async def test_default_max_tokens_comes_from_settings(
    client: InferenceClient, stack: Settings
) -> None:
    story = [{"role": "user", "content": "Tell a long story about a lighthouse keeper."}]
    result = await client.generate(story)
    assert 0 < result.completion_tokens <= stack.max_new_tokens


async def test_embeddings_are_normalised_and_meaningful(client: InferenceClient) -> None:
    texts = [
        "The cat sits on the mat.",
        "A cat is sitting on a rug.",
        "Quarterly revenue fell by ten percent.",
    ]
    result = await client.embed_result(texts)
    assert (result.model, result.dim) == (EMBEDDING_MODEL_ID, EMBEDDING_DIM)
    assert len(result.vectors) == len(texts)
    for vector in result.vectors:
        assert len(vector) == EMBEDDING_DIM
        assert math.sqrt(sum(x * x for x in vector)) == pytest.approx(1.0, abs=1e-4)

    def cosine(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))  # unit vectors

    cat, cat_again, revenue = result.vectors
    assert cosine(cat, cat_again) > cosine(cat, revenue) + 0.3


async def test_concurrent_embeds_are_answered_individually(client: InferenceClient) -> None:
    """Micro-batching must hand each caller back its own vectors, in order."""
    texts = [[f"sentence number {i}", f"another sentence {i}"] for i in range(12)]
    alone = [await client.embed(t) for t in texts[:2]]
    together = await asyncio.gather(*(client.embed(t) for t in texts))
    for solo, batched in zip(alone, together[:2], strict=True):
        for a, b in zip(solo, batched, strict=True):
            assert a == pytest.approx(b, abs=1e-5)
    assert all(len(v) == 2 for v in together)


async def test_invalid_input_is_refused_not_retryable(
    client: InferenceClient, stack: Settings
) -> None:
    # Caught by the client before sending.
    with pytest.raises(InferenceValidationError):
        await client.generate([{"role": "robot", "content": "x"}])
    # Caught by the app: unknown model, and a prompt over the 2048-token context window.
    with pytest.raises(InferenceValidationError) as unknown_model:
        await client.generate(MESSAGES, model="gpt-4")
    assert unknown_model.value.status == 400
    assert not unknown_model.value.retryable
    too_long = [{"role": "user", "content": "lorem ipsum " * 1000}]
    with pytest.raises(InferenceValidationError) as too_long_error:
        await client.generate(too_long, max_tokens=8)
    assert too_long_error.value.status == 400
    # A raw caller gets the JSON error body.
    async with httpx.AsyncClient(base_url=stack.serve_url, timeout=30.0) as http:
        response = await http.post("/generate", json={"messages": [], "max_tokens": 0})
    assert response.status_code == 400
    assert response.json()["error"] == "validation"


async def test_overload_is_shed_with_503_not_queued_forever(
    client: InferenceClient, stack: Settings
) -> None:
    config = InferenceConfig.from_settings(stack)
    capacity = config.generate_max_ongoing_requests + config.max_queued_requests
    burst = capacity + 8
    prompts = [[{"role": "user", "content": f"Count to {i}."}] for i in range(burst)]

    async def attempt(messages: list[dict[str, str]]) -> GenerationResult | InferenceError:
        try:
            return await client.generate(messages, max_tokens=8)
        except InferenceError as exc:
            return exc

    outcomes = await asyncio.gather(*(attempt(p) for p in prompts))
    shed = [o for o in outcomes if isinstance(o, InferenceOverloaded)]
    served = [o for o in outcomes if isinstance(o, GenerationResult)]
    others = [o for o in outcomes if not isinstance(o, InferenceOverloaded | GenerationResult)]
    assert not others, others
    assert shed, f"{burst} concurrent requests over capacity {capacity} were all queued"
    assert len(served) >= config.generate_max_ongoing_requests
    assert all(o.retryable and o.status == 503 for o in shed)
    assert all(o.retry_after == math.ceil(config.retry_after_s) for o in shed)


async def test_the_deployment_handle_transport_keeps_the_error_contract(stack: Settings) -> None:
    """CLAWSTREAM_INFERENCE_TRANSPORT=handle: the same results and error classes as HTTP,
    Serve's own queue limit included."""
    from clawstream.inference.handle_client import HandleInferenceClient

    config = InferenceConfig.from_settings(stack)
    client = HandleInferenceClient(stack.serve_url, ray_address=stack.ray_address,
                                   retry_after_s=config.retry_after_s, timeout=120.0)
    try:
        first = await client.generate(MESSAGES, max_tokens=16)
        assert first.replica.startswith("generator#") and first.text.strip()
        assert (first.model, first.backend) == (GENERATION_MODEL_ID, "llama_cpp")
        with pytest.raises(InferenceValidationError):
            await client.generate(MESSAGES, model="gpt-4")
        # Well over the queue, and generations long enough that the queue is still full
        # when the last ones arrive (the handle's calls leave one by one: on a loaded
        # machine, 8 tokens each let the first finish before the last were sent).
        burst = config.generate_max_ongoing_requests + config.max_queued_requests + 16

        async def attempt(i: int) -> GenerationResult | InferenceError:
            try:
                return await client.generate([{"role": "user", "content": f"Count to {i}."}],
                                             max_tokens=32)
            except InferenceError as exc:
                return exc

        outcomes = await asyncio.gather(*(attempt(i) for i in range(burst)))
        shed = [o for o in outcomes if isinstance(o, InferenceOverloaded)]
        served = [o for o in outcomes if isinstance(o, GenerationResult)]
        assert shed and len(served) + len(shed) == burst, outcomes
        assert all(o.retryable and o.retry_after == config.retry_after_s for o in shed)
    finally:
        await client.aclose()


async def test_a_streamed_generation_is_the_same_text_in_pieces(stack: Settings,
                                                                client: InferenceClient) -> None:
    """llama.cpp token by token, over the model's HTTP route and over a streaming handle
    call: the pieces join to what a non-streamed call answers (greedy), and a bad request
    is still a validation error before any piece."""
    from clawstream.inference.handle_client import HandleInferenceClient

    whole = await client.generate(MESSAGES, max_tokens=24)
    handle = HandleInferenceClient(stack.serve_url, ray_address=stack.ray_address,
                                   retry_after_s=1.0, timeout=120.0)
    try:
        for transport in (client, handle):
            pieces: list[str] = []

            async def on_delta(piece: str, pieces: list[str] = pieces) -> None:
                pieces.append(piece)

            streamed = await transport.generate(MESSAGES, max_tokens=24, on_delta=on_delta)
            assert len(pieces) >= 2, pieces
            assert "".join(pieces) == streamed.text == whole.text
            assert (streamed.prompt_tokens, streamed.completion_tokens) == (
                whole.prompt_tokens, whole.completion_tokens)
            with pytest.raises(InferenceValidationError):
                await transport.generate(MESSAGES, model="gpt-4", on_delta=on_delta)
    finally:
        await handle.aclose()
