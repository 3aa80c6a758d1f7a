"""Generation backends behind one small interface; :func:`make_backend` picks one by name."""

from __future__ import annotations

from clawstream.inference.backends.base import Generation, GenerationBackend
from clawstream.inference.config import InferenceConfig

__all__ = ["Generation", "GenerationBackend", "make_backend", "make_backends"]


def make_backend(config: InferenceConfig) -> GenerationBackend:
    """Imports the chosen backend lazily: the simulated one must not need llama.cpp."""
    if config.backend == "llama_cpp":
        from clawstream.inference.backends.llama_cpp import LlamaCppBackend

        return LlamaCppBackend(
            n_ctx=config.n_ctx,
            n_threads=config.n_threads,
            seed=config.seed,
            repeat_penalty=config.repeat_penalty,
            max_tool_calls=config.local_max_tool_calls,
        )
    if config.backend == "simulated":
        from clawstream.inference.backends.simulated import SimulatedBackend

        return SimulatedBackend(delay_ms=config.simulated_delay_ms)
    raise ValueError(f"unknown inference backend {config.backend!r}")


def make_backends(config: InferenceConfig, kind: str = "local") -> list[GenerationBackend]:
    """The backends of one generation deployment: the configured local one (``local``), or
    one OpenAI-compatible backend per upstream model of the pools (``upstream``)."""
    if kind == "local":
        return [make_backend(config)]
    if kind == "upstream":
        from clawstream.inference.backends.upstream import OpenAICompatBackend

        return [OpenAICompatBackend(model_id, spec) for model_id, spec in config.upstreams.items()]
    raise ValueError(f"unknown kind of generation deployment {kind!r}")
