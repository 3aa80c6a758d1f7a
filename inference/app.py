"""The Ray Serve applications: each model on its own route, and an HTTP ingress that
answers health, the test fixtures and the original paths (``/generate``, ``/embed``) in
front of them.

Why each model is an application of its own: a model step is the hot path, and each
Python process it crosses costs milliseconds of CPU on a small machine. Mounted under
``/model`` (the local generator), ``/upstream`` (the pools' OpenAI-compatible upstream
models, when a pool names one) and ``/embedding``, a call goes HTTP → Serve's proxy →
model replica; through the ingress it is one replica more (proxy → ingress → model).
Clients pick the route by the request's model (:func:`protocol.generate_path`), by the
same rule the ingress routes ``/generate`` with (:func:`protocol.serves_upstream`), so
both roads reach the same deployment. Serve's back-pressure stays Serve's: the proxy
admits at most ``max_ongoing_requests`` per replica and queues at most
``max_queued_requests``, then answers 503 with Retry-After (``backpressure_config``).

Why generation and embeddings stay apart: llama.cpp runs one request at a time, MiniLM is
micro-batched; upstream calls only wait on sockets. They have different concurrency and
are scaled separately. Every surface validates before anything queues, so a bad request
costs no model time, and the ingress turns Serve's back-pressure on its handles into the
same JSON error contract.

Test fixtures (fault injection, the scripted model) live in each generation deployment,
so both roads to a model see them; the ingress's ``POST /faults`` and ``POST /script``
hand a rule or a script to every generation deployment (test stacks run one replica of
each). Both match on the prompt, so a rule or script only fires where its conversation's
requests go.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.config import BackpressureConfig
from ray.serve.deployment import Application, Deployment
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle
from ray.serve.schema import LoggingConfig, ReplicaState

from clawstream import metrics
from clawstream.inference.api import create_api, create_embedding_api, create_model_api
from clawstream.inference.backends import make_backends
from clawstream.inference.backends.base import (
    Generation,
    GenerationBackend,
    Sampling,
    stream_generation,
)
from clawstream.inference.config import InferenceConfig
from clawstream.inference.embeddings import Embedder
from clawstream.inference.errors import (
    BackendFailure,
    GenerationTimeout,
    InputRejected,
    NotReady,
    Overloaded,
)
from clawstream.inference.faults import FaultPlan, FaultRule
from clawstream.inference.protocol import (
    EMBEDDING_ROUTE_PREFIX,
    GENERATOR_APP_NAME,
    GENERATOR_DEPLOYMENT,
    MODEL_ROUTE_PREFIX,
    UPSTREAM_APP_NAME,
    UPSTREAM_DEPLOYMENT,
    UPSTREAM_ROUTE_PREFIX,
    ComponentHealth,
    EmbeddingResult,
    EmbedRequest,
    GenerateRequest,
    GenerationResult,
    HealthReport,
    ReplicaReport,
)
from clawstream.inference.routing import LOCAL, UPSTREAM, BackendRouter, deployment_for
from clawstream.inference.scripted import Script, ScriptedFixtureBackend

_REPLICAS_CACHE_S = 1.0
APP_NAME = "clawstream-inference"
EMBEDDER_APP_NAME = "clawstream-embedder"
ALL_APP_NAMES = (GENERATOR_APP_NAME, UPSTREAM_APP_NAME, EMBEDDER_APP_NAME, APP_NAME)
"""Every application this module may deploy (the upstream one only when a pool names an
upstream); a redeploy removes those it no longer builds."""
ROUTE_PREFIXES = {GENERATOR_APP_NAME: MODEL_ROUTE_PREFIX, UPSTREAM_APP_NAME: UPSTREAM_ROUTE_PREFIX,
                  EMBEDDER_APP_NAME: EMBEDDING_ROUTE_PREFIX, APP_NAME: "/"}
GENERATION_DEPLOYMENTS = {LOCAL: (GENERATOR_DEPLOYMENT, GENERATOR_APP_NAME),
                          UPSTREAM: (UPSTREAM_DEPLOYMENT, UPSTREAM_APP_NAME)}
"""(deployment, application) of each kind of generation deployment."""


def _replica_id() -> str:
    context = serve.get_replica_context()
    return f"{context.deployment}#{context.replica_id.unique_id}"


class GenerationMetrics:
    """A model replica's metrics, through Ray's metrics agent (a replica is a Ray worker
    process: Ray's agent on the node serves them on ``ray_metrics_port``, names prefixed
    ``ray_``). Names come from :mod:`clawstream.metrics`."""

    def __init__(self) -> None:
        from ray.util import metrics as ray_metrics

        self._seconds = ray_metrics.Histogram(
            metrics.SERVE_GENERATE_SECONDS, description="A generation call in its model "
            "replica, by model and outcome", boundaries=list(metrics.LATENCY_BUCKETS),
            tag_keys=("model", "outcome"))
        self._tokens = ray_metrics.Counter(
            metrics.SERVE_TOKENS, description="Tokens read (in) and generated (out) by the "
            "model replicas, by model", tag_keys=("model", "direction"))

    def generated(self, model: str, seconds: float, tokens_in: int, tokens_out: int) -> None:
        self._seconds.observe(seconds, {"model": model, "outcome": "ok"})
        for direction, tokens in (("in", tokens_in), ("out", tokens_out)):
            if tokens > 0:  # Ray's counters refuse an increment of 0
                self._tokens.inc(tokens, {"model": model, "direction": direction})

    def failed(self, model: str, exc: Exception, seconds: float) -> None:
        self._seconds.observe(seconds, {"model": model, "outcome": type(exc).__name__})


@serve.deployment(name=GENERATOR_DEPLOYMENT)
@serve.ingress()
class GenerationDeployment:
    """The generation backends of one kind: the local model (``routing.LOCAL``), or the
    pools' OpenAI-compatible upstreams (``routing.UPSTREAM``, a deployment of its own
    because it only waits on sockets: many calls in flight, no CPU)."""

    def __init__(self, config: InferenceConfig, kind: str = LOCAL) -> None:
        scripted = ScriptedFixtureBackend() if config.fault_injection else None
        self._router = BackendRouter(make_backends(config, kind), scripted)
        self._default_max_tokens = config.max_new_tokens
        # Test stacks only; here rather than in the ingress so that both roads to the
        # model (its own route and the ingress's) see the injected failures.
        self._faults = FaultPlan() if config.fault_injection else None
        self._metrics = GenerationMetrics()

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_model_api(self.generate, stream=self.generate_stream)

    async def ready(self) -> ComponentHealth:
        backend = self._router.default
        return ComponentHealth(model=backend.model_id, backend=backend.name)

    async def served(self) -> list[ComponentHealth]:
        return self._router.served()

    async def add_script(self, script: Script) -> None:
        if self._router.scripted is None:
            raise InputRejected("the scripted fixture is off on this stack")
        self._router.scripted.add(script)

    async def add_fault(self, rule: FaultRule) -> None:
        if self._faults is None:
            raise InputRejected("fault injection is off on this stack")
        self._faults.add(rule)

    async def generate(self, request: GenerateRequest, received_at: float) -> GenerationResult:
        started = time.time()
        backend, max_tokens = self._start(request)
        clock = time.perf_counter()
        try:
            generation = await backend.generate(
                request.messages, max_tokens, request.temperature, request.tools,
                request.tool_choice, sampling(request))
        except Exception as exc:
            self._metrics.failed(backend.model_id, exc, time.perf_counter() - clock)
            raise
        return self._finish(backend, generation, started - received_at, clock)

    async def generate_stream(self, request: GenerateRequest, received_at: float
                              ) -> AsyncIterator[str | GenerationResult]:
        """The text as the backend generates it, then the result (``/generate_stream``)."""
        started = time.time()
        backend, max_tokens = self._start(request)
        clock = time.perf_counter()
        try:
            async for piece in stream_generation(backend, request.messages, max_tokens,
                                                 request.temperature, request.tools,
                                                 request.tool_choice, sampling(request)):
                if isinstance(piece, Generation):
                    yield self._finish(backend, piece, started - received_at, clock)
                else:
                    yield piece
        except Exception as exc:
            self._metrics.failed(backend.model_id, exc, time.perf_counter() - clock)
            raise

    def _finish(self, backend: GenerationBackend, generation: Generation, queued_s: float,
                clock: float) -> GenerationResult:
        result = _result(backend, generation, queued_s, clock)
        self._metrics.generated(backend.model_id, result.run_ms / 1000,
                                generation.prompt_tokens, generation.completion_tokens)
        return result

    def _start(self, request: GenerateRequest) -> tuple[GenerationBackend, int]:
        """Faults first (a test stack's), then the backend and the max_tokens to use."""
        if self._faults is not None:
            self._faults.check(request)
        return self._router.pick(request), request.max_tokens or self._default_max_tokens


def sampling(request: GenerateRequest) -> Sampling:
    return Sampling(top_p=request.top_p, stop=tuple(request.stop), seed=request.seed)


def _result(backend: GenerationBackend, generation: Generation, queued_s: float,
            clock: float) -> GenerationResult:
    return GenerationResult(
        text=generation.text,
        model=backend.model_id,
        backend=backend.name,
        prompt_tokens=generation.prompt_tokens,
        completion_tokens=generation.completion_tokens,
        finish_reason=generation.finish_reason,
        tool_calls=list(generation.tool_calls),
        replica=_replica_id(),
        queue_ms=max(0.0, queued_s * 1000.0),
        run_ms=(time.perf_counter() - clock) * 1000.0,
    )


@serve.deployment(name="embedder")
@serve.ingress()
class EmbeddingDeployment:
    """MiniLM behind ``@serve.batch``. With ``embed_lazy`` the model (torch and
    sentence-transformers, about 1 GB resident) loads on the first call instead of at
    start: a stack that never embeds (``chat`` only) never holds it."""

    def __init__(self, config: InferenceConfig) -> None:
        self._threads = config.embed_threads
        self._embedder: Embedder | None = None
        self._loading = asyncio.Lock()
        batcher: Any = self._encode_batch  # @serve.batch adds setters its typing hides
        batcher.set_max_batch_size(config.embed_max_batch_size)
        batcher.set_batch_wait_timeout_s(config.embed_batch_wait_s)
        if not config.embed_lazy:
            self._embedder = Embedder(threads=self._threads)

    async def _loaded(self) -> Embedder:
        async with self._loading:
            if self._embedder is None:
                # In a thread: health checks keep answering during the seconds it takes.
                self._embedder = await asyncio.to_thread(Embedder, self._threads)
        return self._embedder

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_embedding_api(self._embed_request)

    async def _embed_request(self, request: EmbedRequest) -> EmbeddingResult:
        return await self.embed(request.texts)

    async def ready(self) -> ComponentHealth:
        return ComponentHealth(model=Embedder.model_id, backend="sentence_transformers")

    async def embed(self, texts: list[str]) -> EmbeddingResult:
        vectors = await self._encode_batch(texts)
        return EmbeddingResult(model=Embedder.model_id, dim=Embedder.dim, vectors=vectors)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _encode_batch(self, requests: list[list[str]]) -> list[list[list[float]]]:
        """One forward pass for several requests' texts: per-call overhead dominates MiniLM.

        A text that several requests of the batch carry (one question asked in several
        conversations at once, a corpus indexed by two workers) is encoded once."""
        unique = list(dict.fromkeys(text for texts in requests for text in texts))
        # A thread keeps the replica's event loop (health checks, batch assembly) responsive.
        embedder = await self._loaded()
        vectors = dict(zip(unique, await asyncio.to_thread(embedder.encode, unique),
                           strict=True))
        return [[vectors[text] for text in texts] for texts in requests]


def _original_message(exc: Exception) -> str:
    """Ray re-raises a replica's exception as a RayTaskError that subclasses the original
    and whose message is the remote traceback; callers should see the original message."""
    return str(getattr(exc, "cause", None) or exc)


class HandleGateway:
    """A :class:`clawstream.inference.api.ModelGateway` that calls the model deployments.

    Each model is an application of its own (:data:`GENERATION_DEPLOYMENTS`,
    :data:`EMBEDDER_APP_NAME`); a handle is taken on first use, once Serve has them. The
    upstream deployment exists only when ``config.upstreams`` names a model."""

    def __init__(self, config: InferenceConfig) -> None:
        self._handles: dict[str, DeploymentHandle] = {}
        self._config = config
        self._ready: HealthReport | None = None
        self._replicas: tuple[float, ReplicaReport] | None = None

    def _handle(self, deployment: str, app_name: str) -> DeploymentHandle:
        handle = self._handles.get(deployment)
        if handle is None:
            handle = self._handles[deployment] = serve.get_deployment_handle(
                deployment, app_name=app_name)
        return handle

    def _generation(self, kind: str) -> DeploymentHandle:
        return self._handle(*GENERATION_DEPLOYMENTS[kind])

    @property
    def _embedder(self) -> DeploymentHandle:
        return self._handle("embedder", EMBEDDER_APP_NAME)

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
        kinds = [LOCAL] + ([UPSTREAM] if self._config.upstreams else [])
        return [self._generation(kind) for kind in kinds]

    async def generate(self, request: GenerateRequest, received_at: float) -> GenerationResult:
        handle = self._generation(deployment_for(request.model, self._config.upstreams.keys()))
        result: GenerationResult = await self._call(handle.generate.remote(request, received_at))
        return result

    async def add_fault(self, rule: FaultRule) -> None:
        """Every generation deployment gets the rule (see the module's docstring)."""
        await asyncio.gather(
            *(self._call(h.add_fault.remote(rule)) for h in self._generation_handles())
        )

    async def add_script(self, script: Script) -> None:
        """Every generation deployment gets the script: a marker answers whatever the
        request's model, on whichever road the request took."""
        await asyncio.gather(
            *(self._call(h.add_script.remote(script)) for h in self._generation_handles())
        )

    async def embed(self, request: EmbedRequest) -> EmbeddingResult:
        result: EmbeddingResult = await self._call(self._embedder.embed.remote(request.texts))
        return result

    async def replicas(self) -> ReplicaReport:
        """Serve's controller's count, cached for a second: every dispatcher asks every few
        seconds, and a controller call per ask would grow with the workers."""
        now = time.monotonic()
        if self._replicas is None or now - self._replicas[0] > _REPLICAS_CACHE_S:
            status = await asyncio.to_thread(serve.status)
            running = {f"{app}/{name}": deployment.replica_states.get(ReplicaState.RUNNING, 0)
                       for app, app_status in status.applications.items()
                       for name, deployment in app_status.deployments.items()}
            self._replicas = (now, ReplicaReport(running=running))
        return self._replicas[1]

    async def health(self) -> HealthReport:
        # Once both deployments have answered, they stay up for the replica's lifetime
        # (Serve restarts a dead replica before it takes traffic; a lazy embedder loads its
        # model on its first call), so later probes need not queue behind generations.
        if self._ready is not None:
            return self._ready
        try:
            generation, embedding, *served = await asyncio.wait_for(
                asyncio.gather(
                    self._generation(LOCAL).ready.remote(),
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
    def __init__(self, config: InferenceConfig) -> None:
        self._gateway = HandleGateway(config)
        self._fixtures = config.fault_injection

    def __serve_build_asgi_app__(self) -> FastAPI:
        gateway = self._gateway
        if not self._fixtures:
            return create_api(gateway)
        return create_api(gateway, gateway.add_fault, gateway.add_script)


def _deployment(decorated: object) -> Deployment:
    """@serve.deployment returns a Deployment, but its annotations say the class itself."""
    if not isinstance(decorated, Deployment):
        raise TypeError(f"expected a Serve Deployment, got {decorated!r}")
    return decorated


def generation_autoscaling(config: InferenceConfig) -> dict[str, float]:
    """Serve scales the local model's replicas on ongoing requests: a replica busy at its
    concurrency (``max_ongoing_requests``) is the signal to add one, between the warm
    minimum and the maximum the cluster can place."""
    return {"min_replicas": config.generate_min_replicas,
            "initial_replicas": config.generate_min_replicas,
            "max_replicas": config.generate_max_replicas,
            "target_ongoing_requests": config.generate_max_ongoing_requests}


def build_apps(config: InferenceConfig) -> dict[str, Application]:
    """The bound applications by name, deployment options taken from ``config``.

    Options are set here rather than in the decorators because they come from settings
    (back-pressure limits differ between the real and the simulated backend). Replicas
    get no runtime_env of their own so that Serve gives them the deploying job's (see
    :func:`clawstream.inference.deploy.job_runtime_env`): a deployment-level runtime_env would
    replace it, py_modules included. Per-request access logs are off: on a small machine
    writing and shipping a log line per call costs more CPU than the call.
    """
    backpressure = BackpressureConfig(status_code=503, retry_after_s=config.retry_after_s)
    logging_config = LoggingConfig(enable_access_log=False, log_level="WARNING")
    generator = (
        _deployment(GenerationDeployment)
        .options(
            max_ongoing_requests=config.generate_max_ongoing_requests,
            max_queued_requests=config.max_queued_requests,
            autoscaling_config=generation_autoscaling(config),
            backpressure_config=backpressure,
            logging_config=logging_config,
            ray_actor_options={"num_cpus": config.generate_num_cpus},
        )
        .bind(config, LOCAL)
    )
    upstream = None
    if config.upstreams:
        upstream = (
            _deployment(GenerationDeployment)
            .options(
                name=GENERATION_DEPLOYMENTS[UPSTREAM][0],
                max_ongoing_requests=config.upstream_max_ongoing_requests,
                max_queued_requests=config.max_queued_requests * 4,
                backpressure_config=backpressure,
                logging_config=logging_config,
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
            logging_config=logging_config,
            ray_actor_options={"num_cpus": config.embed_num_cpus},
        )
        .bind(config)
    )
    ingress = (
        _deployment(InferenceIngress)
        .options(
            # The ingress only awaits handles; its own limit is a last line of defence.
            max_ongoing_requests=512,
            max_queued_requests=1024,
            backpressure_config=backpressure,
            logging_config=logging_config,
            ray_actor_options={"num_cpus": config.ingress_num_cpus},
        )
        .bind(config)
    )
    apps = {GENERATOR_APP_NAME: generator, EMBEDDER_APP_NAME: embedder, APP_NAME: ingress}
    if upstream is not None:
        apps[UPSTREAM_APP_NAME] = upstream
    return apps
