"""The Ray Serve application: an HTTP ingress in front of two model deployments.

Why three deployments and not one: generation (llama.cpp, one request at a time) and
embeddings (MiniLM, micro-batched) have different concurrency and are scaled
separately; the ingress validates before anything queues, so a bad request costs no
model time, and it turns Serve's back-pressure into the JSON error contract.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.config import BackpressureConfig
from ray.serve.deployment import Application, Deployment
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from clawstream.inference.api import create_api
from clawstream.inference.backends import make_backends
from clawstream.inference.config import InferenceConfig
from clawstream.inference.embeddings import Embedder
from clawstream.inference.errors import (
    BackendFailure,
    GenerationTimeout,
    InputRejected,
    NotReady,
    Overloaded,
)
from clawstream.inference.faults import FaultPlan
from clawstream.inference.protocol import (
    ComponentHealth,
    EmbeddingResult,
    EmbedRequest,
    GenerateRequest,
    GenerationResult,
    HealthReport,
)
from clawstream.inference.routing import LOCAL, UPSTREAM, BackendRouter, deployment_for
from clawstream.inference.scripted import Script, ScriptedFixtureBackend

APP_NAME = "clawstream-inference"


def _replica_id() -> str:
    context = serve.get_replica_context()
    return f"{context.deployment}#{context.replica_id.unique_id}"


@serve.deployment(name="generator")
class GenerationDeployment:
    """The generation backends of one kind: the local model (``routing.LOCAL``), or the
    pools' OpenAI-compatible upstreams (``routing.UPSTREAM``, a deployment of its own
    because it only waits on sockets: many calls in flight, no CPU)."""

    def __init__(self, config: InferenceConfig, kind: str = LOCAL) -> None:
        scripted = ScriptedFixtureBackend() if config.fault_injection else None
        self._router = BackendRouter(make_backends(config, kind), scripted)
        self._default_max_tokens = config.max_new_tokens

    async def ready(self) -> ComponentHealth:
        backend = self._router.default
        return ComponentHealth(model=backend.model_id, backend=backend.name)

    async def served(self) -> list[ComponentHealth]:
        return self._router.served()

    async def add_script(self, script: Script) -> None:
        if self._router.scripted is None:
            raise InputRejected("the scripted fixture is off on this stack")
        self._router.scripted.add(script)

    async def generate(self, request: GenerateRequest, received_at: float) -> GenerationResult:
        started = time.time()
        backend = self._router.pick(request)
        max_tokens = request.max_tokens or self._default_max_tokens
        clock = time.perf_counter()
        generation = await backend.generate(
            request.messages, max_tokens, request.temperature, request.tools, request.tool_choice
        )
        run_ms = (time.perf_counter() - clock) * 1000.0
        return GenerationResult(
            text=generation.text,
            model=backend.model_id,
            backend=backend.name,
            prompt_tokens=generation.prompt_tokens,
            completion_tokens=generation.completion_tokens,
            finish_reason=generation.finish_reason,
            tool_calls=list(generation.tool_calls),
            replica=_replica_id(),
            queue_ms=max(0.0, (started - received_at) * 1000.0),
            run_ms=run_ms,
        )


@serve.deployment(name="embedder")
class EmbeddingDeployment:
    def __init__(self, config: InferenceConfig) -> None:
        self._embedder = Embedder(threads=config.embed_threads)
        batcher: Any = self._encode_batch  # @serve.batch adds setters its typing hides
        batcher.set_max_batch_size(config.embed_max_batch_size)
        batcher.set_batch_wait_timeout_s(config.embed_batch_wait_s)

    async def ready(self) -> ComponentHealth:
        return ComponentHealth(model=self._embedder.model_id, backend="sentence_transformers")

    async def embed(self, texts: list[str]) -> EmbeddingResult:
        vectors = await self._encode_batch(texts)
        embedder = self._embedder
        return EmbeddingResult(model=embedder.model_id, dim=embedder.dim, vectors=vectors)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _encode_batch(self, requests: list[list[str]]) -> list[list[list[float]]]:
        """One forward pass for several requests' texts: per-call overhead dominates MiniLM."""
        flat = [text for texts in requests for text in texts]
        # A thread keeps the replica's event loop (health checks, batch assembly) responsive.
        vectors = await asyncio.to_thread(self._embedder.encode, flat)
        out: list[list[list[float]]] = []
        start = 0
        for texts in requests:
            out.append(vectors[start : start + len(texts)])
            start += len(texts)
        return out


def _original_message(exc: Exception) -> str:
    """Ray re-raises a replica's exception as a RayTaskError that subclasses the original
    and whose message is the remote traceback; callers should see the original message."""
    return str(getattr(exc, "cause", None) or exc)


class HandleGateway:
    """A :class:`clawstream.inference.api.ModelGateway` that calls the model deployments."""

    def __init__(
        self,
        generator: DeploymentHandle,
        embedder: DeploymentHandle,
        config: InferenceConfig,
        upstream: DeploymentHandle | None = None,
    ) -> None:
        self._generator = generator
        self._embedder = embedder
        self._upstream = upstream
        self._config = config
        self._ready: HealthReport | None = None

    async def _call(self, response: Any) -> Any:
        try:
            return await response
        except InputRejected as exc:
            raise InputRejected(_original_message(exc)) from None
        except BackendFailure as exc:
            raise BackendFailure(_original_message(exc)) from None
        except GenerationTimeout as exc:
            raise GenerationTimeout(_original_message(exc)) from None
        except Overloaded as exc:
            # A backend's own overload (an upstream's 429/503, a scripted one), with its
            # Retry-After; Ray's wrapper keeps the original as ``cause``.
            original = getattr(exc, "cause", None) or exc
            retry_after = getattr(original, "retry_after_s", None)
            raise Overloaded(_original_message(exc), retry_after) from None
        except BackPressureError as exc:
            raise Overloaded(exc.message, self._config.retry_after_s) from exc
        except DeploymentUnavailableError as exc:
            raise Overloaded(exc.message, self._config.retry_after_s) from exc
        except Exception as exc:
            raise BackendFailure(f"{type(exc).__name__}: {exc}") from exc

    def _generation_handles(self) -> list[DeploymentHandle]:
        return [self._generator] + ([self._upstream] if self._upstream is not None else [])

    async def generate(self, request: GenerateRequest, received_at: float) -> GenerationResult:
        handle = self._generator
        if self._upstream is not None and deployment_for(
            request.model, set(self._config.upstreams)
        ) == UPSTREAM:
            handle = self._upstream
        result: GenerationResult = await self._call(handle.generate.remote(request, received_at))
        return result

    async def add_script(self, script: Script) -> None:
        """Every generation deployment gets the script: a marker answers whatever the
        request's model (test stacks run one replica of each)."""
        await asyncio.gather(
            *(self._call(h.add_script.remote(script)) for h in self._generation_handles())
        )

    async def embed(self, request: EmbedRequest) -> EmbeddingResult:
        result: EmbeddingResult = await self._call(self._embedder.embed.remote(request.texts))
        return result

    async def health(self) -> HealthReport:
        # Once both models have answered, they stay loaded for the replica's lifetime (Serve
        # restarts a dead replica, which reloads before taking traffic), so later probes
        # need not queue behind long generations.
        if self._ready is not None:
            return self._ready
        try:
            generation, embedding, *served = await asyncio.wait_for(
                asyncio.gather(
                    self._generator.ready.remote(),
                    self._embedder.ready.remote(),
                    *(h.served.remote() for h in self._generation_handles()),
                ),
                timeout=self._config.health_probe_timeout_s,
            )
        except TimeoutError as exc:
            raise NotReady("model deployments did not answer the readiness probe yet") from exc
        except Exception as exc:
            raise NotReady(f"readiness probe failed: {type(exc).__name__}: {exc}") from exc
        models = [component for group in served for component in group]
        self._ready = HealthReport(
            status="ok", generation=generation, embedding=embedding, models=models
        )
        return self._ready


@serve.deployment(name="ingress")
@serve.ingress()
class InferenceIngress:
    def __init__(
        self,
        generator: DeploymentHandle,
        embedder: DeploymentHandle,
        config: InferenceConfig,
        upstream: DeploymentHandle | None = None,
    ) -> None:
        self._gateway = HandleGateway(generator, embedder, config, upstream)
        self._faults = FaultPlan() if config.fault_injection else None
        self._fixtures = config.fault_injection

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_api(
            self._gateway, self._faults, self._gateway.add_script if self._fixtures else None
        )


def _deployment(decorated: object) -> Deployment:
    """@serve.deployment returns a Deployment, but its annotations say the class itself."""
    if not isinstance(decorated, Deployment):
        raise TypeError(f"expected a Serve Deployment, got {decorated!r}")
    return decorated


def build_app(config: InferenceConfig) -> Application:
    """The bound application, deployment options taken from ``config``.

    Options are set here rather than in the decorators because they come from settings
    (back-pressure limits differ between the real and the simulated backend). Replicas
    get no runtime_env of their own so that Serve gives them the deploying job's (see
    :func:`clawstream.inference.deploy.job_runtime_env`): a deployment-level runtime_env would
    replace it, py_modules included.
    """
    backpressure = BackpressureConfig(status_code=503, retry_after_s=config.retry_after_s)
    generator = (
        _deployment(GenerationDeployment)
        .options(
            max_ongoing_requests=config.generate_max_ongoing_requests,
            max_queued_requests=config.max_queued_requests,
            backpressure_config=backpressure,
            ray_actor_options={"num_cpus": config.generate_num_cpus},
        )
        .bind(config, LOCAL)
    )
    upstream = None
    if config.upstreams:
        upstream = (
            _deployment(GenerationDeployment)
            .options(
                name="upstream",
                max_ongoing_requests=config.upstream_max_ongoing_requests,
                max_queued_requests=config.max_queued_requests * 4,
                backpressure_config=backpressure,
                ray_actor_options={"num_cpus": config.upstream_num_cpus},
            )
            .bind(config, UPSTREAM)
        )
    embedder = (
        _deployment(EmbeddingDeployment)
        .options(
            max_ongoing_requests=config.embed_max_ongoing_requests,
            # An embed call takes tens of ms and is batched, so a deeper queue still
            # drains in well under a second.
            max_queued_requests=config.max_queued_requests * 4,
            backpressure_config=backpressure,
            ray_actor_options={"num_cpus": config.embed_num_cpus},
        )
        .bind(config)
    )
    return (
        _deployment(InferenceIngress)
        .options(
            # The ingress only awaits handles; its own limit is a last line of defence.
            max_ongoing_requests=512,
            max_queued_requests=1024,
            backpressure_config=backpressure,
            ray_actor_options={"num_cpus": config.ingress_num_cpus},
        )
        .bind(generator, embedder, config, upstream)
    )
