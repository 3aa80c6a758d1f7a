"""Generation backends behind one small interface; :func:`make_backend` picks one by name."""

from __future__ import annotations

from clawstream.inference.backends.base import Generation, GenerationBackend
from clawstream.inference.config import InferenceConfig

__all__ = ["Generation", "GenerationBackend", "make_backend"]


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
