"""What the replicas need to know, passed to them as constructor arguments.

Replicas run in Ray worker processes whose environment is whatever ``ray start`` had,
so reading ``CLAWSTREAM_*`` there would silently pick up the wrong stack. The driver
builds this object from :class:`clawstream.config.Settings` and Serve pickles it to
each replica. Besides pydantic it needs only :mod:`clawstream.config`, for the upstream
specs the pools declare (the API keys themselves are read by the replica, never carried
here).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from clawstream.config import UpstreamSpec, upstream_models

if TYPE_CHECKING:
    from clawstream.config import Settings

BackendName = Literal["llama_cpp", "simulated"]

# A llama.cpp context runs one sequence at a time; a second in-flight request only hides
# the ingress→replica round trip. The simulated backend just sleeps, so it can overlap.
DEFAULT_GENERATE_MAX_ONGOING: dict[str, int] = {"llama_cpp": 2, "simulated": 64}


class InferenceConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: BackendName = "llama_cpp"
    max_new_tokens: int = Field(default=64, ge=1)
    simulated_delay_ms: float = Field(default=20.0, ge=0.0)

    # llama.cpp
    n_ctx: int = 2048
    n_threads: int = Field(default=2, ge=1)
    seed: int = 0
    repeat_penalty: float = Field(default=1.1, ge=1.0)
    local_max_tool_calls: int = Field(default=1, ge=1)

    # OpenAI-compatible upstreams by served model id (from the pools); served by their own
    # deployment, which only waits on sockets: many requests in flight, almost no CPU.
    upstreams: dict[str, UpstreamSpec] = Field(default_factory=dict)
    upstream_max_ongoing_requests: int = Field(default=64, ge=1)
    upstream_num_cpus: float = 0.05

    # Serve back-pressure: past max_queued_requests waiting in the ingress's handle to a
    # model deployment, the request is answered 503 instead of waiting without bound.
    generate_max_ongoing_requests: int = Field(default=2, ge=1)
    # Serve autoscaling of the local model's deployment on ongoing requests per replica.
    generate_min_replicas: int = Field(default=1, ge=1)
    generate_max_replicas: int = Field(default=1, ge=1)
    embed_max_ongoing_requests: int = Field(default=32, ge=1)
    max_queued_requests: int = Field(default=16, ge=1)
    retry_after_s: float = Field(default=1.0, ge=0.0)

    # Embedding micro-batching (@serve.batch): requests, not texts.
    embed_max_batch_size: int = 16
    embed_batch_wait_s: float = 0.005
    embed_threads: int = 1
    embed_lazy: bool = True
    """Load MiniLM on the first embed call, not at replica start (idle footprint)."""

    # Ray resources: the local cluster has 2 CPUs and all three deployments must fit.
    ingress_num_cpus: float = 0.25
    generate_num_cpus: float = 1.0
    embed_num_cpus: float = 0.5

    # Test stacks only: the ingress accepts injected failures (inference/faults.py).
    fault_injection: bool = False

    # How long /health waits for each model deployment to answer its readiness probe.
    health_probe_timeout_s: float = 5.0

    @classmethod
    def from_settings(cls, settings: Settings) -> InferenceConfig:
        backend = settings.inference_backend
        if backend not in DEFAULT_GENERATE_MAX_ONGOING:
            raise ValueError(
                f"CLAWSTREAM_INFERENCE_BACKEND={backend!r}: expected one of "
                f"{sorted(DEFAULT_GENERATE_MAX_ONGOING)}"
            )
        ongoing = settings.inference_max_ongoing_requests or DEFAULT_GENERATE_MAX_ONGOING[backend]
        return cls(
            backend=backend,  # type: ignore[arg-type]  # checked against the keys above
            max_new_tokens=settings.max_new_tokens,
            simulated_delay_ms=settings.simulated_delay_ms,
            generate_max_ongoing_requests=ongoing,
            generate_min_replicas=settings.inference_min_replicas,
            generate_max_replicas=max(settings.inference_min_replicas,
                                      settings.inference_max_replicas),
            max_queued_requests=settings.inference_max_queued_requests,
            retry_after_s=settings.inference_retry_after_s,
            n_threads=settings.inference_llama_threads,
            fault_injection=settings.fault_injection,
            embed_lazy=settings.inference_lazy_embedder,
            repeat_penalty=settings.inference_repeat_penalty,
            local_max_tool_calls=settings.inference_local_max_tool_calls,
            upstreams=upstream_models(settings.pools),
            upstream_max_ongoing_requests=settings.inference_upstream_max_ongoing_requests,
        )
