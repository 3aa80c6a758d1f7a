"""The simulated backend: deterministic, honest about what it is, and roughly model-shaped."""

from __future__ import annotations

import time

import pytest

from clawstream.config import Settings
from clawstream.inference.backends import make_backend
from clawstream.inference.backends.simulated import SIMULATED_MODEL_ID, SimulatedBackend
from clawstream.inference.config import InferenceConfig
from clawstream.inference.protocol import ChatMessage

MESSAGES = [
    ChatMessage(role="system", content="You are terse."),
    ChatMessage(role="user", content="Summarise the incident report in one line."),
]


async def test_same_prompt_same_answer() -> None:
    backend = SimulatedBackend(delay_ms=0)
    first = await backend.generate(MESSAGES, max_tokens=32, temperature=0.0)
    second = await backend.generate(list(MESSAGES), max_tokens=32, temperature=0.7)
    assert first == second


async def test_different_prompts_differ() -> None:
    backend = SimulatedBackend(delay_ms=0)
    other = [ChatMessage(role="user", content="Something else entirely.")]
    a = await backend.generate(MESSAGES, max_tokens=32, temperature=0.0)
    b = await backend.generate(other, max_tokens=32, temperature=0.0)
    assert a.text != b.text


@pytest.mark.parametrize("max_tokens", [1, 2, 7, 64, 1024])
async def test_token_counts_are_plausible(max_tokens: int) -> None:
    result = await SimulatedBackend(delay_ms=0).generate(MESSAGES, max_tokens, 0.0)
    assert 1 <= result.completion_tokens <= max_tokens
    assert result.finish_reason == ("length" if result.completion_tokens == max_tokens else "stop")
    # A prompt of ~60 characters in two messages is some tens of tokens, never zero.
    assert 10 <= result.prompt_tokens <= 60
    assert result.text.startswith("[simulated ")


async def test_role_is_part_of_the_prompt() -> None:
    as_user = [ChatMessage(role="user", content="same words")]
    as_system = [ChatMessage(role="system", content="same words")]
    backend = SimulatedBackend(delay_ms=0)
    a = await backend.generate(as_user, 16, 0.0)
    b = await backend.generate(as_system, 16, 0.0)
    assert a.text != b.text


async def test_waits_the_configured_delay() -> None:
    backend = SimulatedBackend(delay_ms=30)
    started = time.perf_counter()
    await backend.generate(MESSAGES, 8, 0.0)
    assert time.perf_counter() - started >= 0.029


def test_selected_only_when_asked_and_names_itself() -> None:
    assert Settings().inference_backend == "llama_cpp"
    config = InferenceConfig.from_settings(
        Settings(inference_backend="simulated", simulated_delay_ms=5)
    )
    backend = make_backend(config)
    assert isinstance(backend, SimulatedBackend)
    assert backend.name == "simulated"
    assert backend.model_id == SIMULATED_MODEL_ID
    assert "simulated" in backend.model_id
    assert backend.delay_ms == 5


def test_backend_default_concurrency_and_overrides() -> None:
    real = InferenceConfig.from_settings(Settings())
    simulated = InferenceConfig.from_settings(Settings(inference_backend="simulated"))
    assert real.generate_max_ongoing_requests == 2
    assert simulated.generate_max_ongoing_requests > real.generate_max_ongoing_requests
    tuned = InferenceConfig.from_settings(
        Settings(inference_max_ongoing_requests=3, inference_max_queued_requests=5)
    )
    assert (tuned.generate_max_ongoing_requests, tuned.max_queued_requests) == (3, 5)


def test_unknown_backend_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="CLAWSTREAM_INFERENCE_BACKEND"):
        InferenceConfig.from_settings(Settings(inference_backend="gpt"))
