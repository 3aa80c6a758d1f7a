"""The composition root: one worker process, built in one place.

Everything a worker holds (the Faust app, its topics and tables, Redis and inference
clients, caches, the agent and tool registry, the flag reader, the coordinator and the
step executors) is made here and handed to whoever needs it; no processor module creates
state at import. So a module can be imported without side effects, tests can build two
workers in one process, and the pure rules get their registries passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import faust
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from clawstream.config import Settings, upstream_models
from clawstream.inference.client import InferenceClient
from clawstream.processors import faust_fence
from clawstream.processors.answered import PriorAnswers
from clawstream.processors.app import (
    WorkerPart,
    add_pages,
    create_app,
    create_tables,
    create_topics,
    worker_parts,
)
from clawstream.processors.caching import Caches
from clawstream.processors.canary.watcher import CanaryWatcher
from clawstream.processors.conversation import Rules
from clawstream.processors.coordinator import Coordinator
from clawstream.processors.emit import Emitter
from clawstream.processors.executors import StepExecutors
from clawstream.processors.flow.flags import FlagReader
from clawstream.processors.flow.limiter import PoolAdmission
from clawstream.processors.flow.replicas import ServeReplicas
from clawstream.processors.ledger import EffectLedger
from clawstream.processors.observe import ConsumerLag
from clawstream.processors.otlp import AnswerSpans, otlp_exporter
from clawstream.processors.policy import Policy
from clawstream.processors.registry import Registry, ToolResources, load_registry


@dataclass(frozen=True)
class Worker:
    name: str
    settings: Settings
    app: faust.App
    registry: Registry
    flag_reader: FlagReader
    serve_replicas: ServeReplicas
    """Serve's replica count per deployment, for the limiter (starts with its ``start``)."""
    parts: tuple[WorkerPart, ...]
    """What it runs (processors/app.py worker_parts): all three unless started as one."""
    coordinator: Coordinator | None
    """None in a worker that runs only executors."""
    executors: StepExecutors
    canary_watcher: CanaryWatcher
    """Rolls a failing canary back (starts with :meth:`CanaryWatcher.start`)."""
    spans: AnswerSpans | None
    """The answers' spans going to an OTLP collector (None: no endpoint configured)."""


def inference_client(settings: Settings) -> InferenceClient:
    """The worker's model client: HTTP by default; the generation deployments' handles with
    ``inference_transport=handle`` (imported only then: Ray stays out of an HTTP worker).
    It knows the pools' upstream models, so each call takes its model's direct route."""
    upstreams = upstream_models(settings.pools).keys()
    if settings.inference_transport == "handle":
        from clawstream.inference.handle_client import HandleInferenceClient

        return HandleInferenceClient(settings.serve_url, ray_address=settings.ray_address,
                                     retry_after_s=settings.inference_retry_after_s,
                                     timeout=settings.batch_step_timeout_s,
                                     upstream_models=upstreams)
    return InferenceClient(settings.serve_url, timeout=settings.batch_step_timeout_s,
                           upstream_models=upstreams)


def build_worker(settings: Settings, name: str, registry: Registry | None = None) -> Worker:
    """A worker named ``name``; ``registry`` defaults to the built-ins plus
    ``settings.agent_modules``. Creates clients (they connect lazily) and no threads: the
    flag reader, the replica count and the canary watcher start with their ``start``, the
    app with a Faust worker."""
    faust_fence.install()
    registry = registry or load_registry(settings)
    parts = worker_parts(settings.role)
    app = create_app(settings, name, parts)
    topics = create_topics(app)
    add_pages(app, name, lambda: faust_fence.recovered(app))
    REGISTRY.register(ConsumerLag(settings.app_id, lambda: faust_fence.consumer_positions(app)))
    spans = otlp_exporter(settings.otlp_endpoint, name) if settings.otlp_endpoint else None
    emitter = Emitter(app, on_answer=spans.export if spans else None)
    redis = aioredis.Redis.from_url(settings.redis_url)
    flag_reader = FlagReader(settings.bootstrap_servers, settings.flag_poll_s)
    serve_replicas = ServeReplicas(settings)
    inference = inference_client(settings)
    caches = Caches(settings, inference)
    coordinator = None
    if "coordinator" in parts:
        coordinator = Coordinator(worker_name=name, settings=settings,
                                  rules=Rules(Policy.from_settings(settings), registry),
                                  tables=create_tables(app, settings), emitter=emitter,
                                  redis=redis, flags=flag_reader.view,
                                  prior_answers=PriorAnswers(settings))
        coordinator.install(app, topics)
    executors = StepExecutors(
        worker_name=name, settings=settings, emitter=emitter, inference=inference,
        caches=caches, ledger=EffectLedger(redis),
        tools=registry.build_tools(ToolResources(settings, redis, caches.embeddings)),
        admission=PoolAdmission(redis, settings, flag_reader.view, serve_replicas.running),
        flags=flag_reader.view)
    executors.install(app, topics, tools="tools" in parts, inference="inference" in parts)
    watcher = CanaryWatcher(settings, registry, flag_reader.view, name)
    return Worker(name, settings, app, registry, flag_reader, serve_replicas, parts,
                  coordinator, executors, watcher, spans)
