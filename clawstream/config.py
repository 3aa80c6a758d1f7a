"""One typed place for configuration.

Every process (CLI, Faust worker, Ray Serve app, tests) reads the same settings from
environment variables prefixed ``CLAWSTREAM_`` so that a test stack and a developer stack
can run side by side just by pointing ``CLAWSTREAM_STATE_DIR`` and the ports elsewhere.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def default_state_dir() -> Path:
    """The user's data dir, not the package's: the local stack's ports are machine-wide, so
    its state is too, whichever directory ``clawstream`` runs from (and never inside
    site-packages)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "clawstream"


def credentials_dir(state_dir: Path) -> Path:
    return state_dir / "credentials"


class Login(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    username: str
    password: str = Field(repr=False)
    mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256"] = "SCRAM-SHA-512"
    """Kafka only: the SASL mechanism of this login (a rotation moves to the other one)."""


class Credentials(BaseModel):
    """One component's secrets: never one file for all (deploy/local/credentials.py)."""
    model_config = ConfigDict(frozen=True, extra="forbid")
    role: str
    kafka: Login
    redis: Login

    @classmethod
    def load(cls, path: Path) -> Credentials:
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise CredentialsError(
                f"no credentials at {path}: `clawstream up` writes each role's there (set "
                "CLAWSTREAM_ROLE for another role, CLAWSTREAM_CREDENTIALS_FILE for a file "
                "elsewhere, or CLAWSTREAM_AUTH=false on a stack started without auth)"
            ) from None
        except PermissionError:
            raise CredentialsError(f"credentials at {path} are not readable by this user "
                                   "(they are the owner's only, mode 0600)") from None
        try:
            return cls.model_validate_json(text)
        except ValueError as exc:
            raise CredentialsError(f"credentials at {path} are malformed: {exc}") from None


class CredentialsError(RuntimeError):
    """This process has no usable secret for its role: said once, with what to do."""


class UpstreamSpec(BaseModel):
    """An OpenAI-compatible server a pool's model calls: vLLM, llama.cpp's server, a hosted
    provider. The Serve app calls ``POST {base_url}/v1/chat/completions`` with ``model``.

    The API key is never part of the settings: ``api_key_env`` names the environment variable
    that holds it, read by the Serve replica (so it is set where Ray runs, e.g. a Kubernetes
    secret, and never lands in a settings dump, an event or a log).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_url: str = Field(
        pattern=r"^https?://", description="Scheme, host, port, and any path prefix before "
        "/v1 (e.g. http://127.0.0.1:8080 or https://api.example.com)."
    )
    model: str = Field(min_length=1, description="The upstream's own name for the model.")
    api_key_env: str | None = Field(
        default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable with the API key (None: no Authorization header).",
    )
    timeout_s: float = Field(default=60.0, gt=0, description="One upstream call, end to end.")
    connect_timeout_s: float = Field(default=5.0, gt=0)
    max_connections: int = Field(
        default=32, ge=1, description="Keep-alive connections per replica to this upstream."
    )


class PoolSpec(BaseModel):
    """A logical model pool: what it can take, and which backend model serves it.

    With ``upstream`` the pool's model is served by that OpenAI-compatible server, under the
    id ``backend_model`` (defaulting to ``upstream.model``); without it, by the Serve app's
    local generator.
    """

    capacity_tokens_per_s: float = Field(
        gt=0, description="Prompt + output tokens/s the pool takes; with capacity_per_replica "
        "(the default) per replica of the Serve deployment serving it.")
    rank: int = Field(default=0, description="Size order: degrade routes to the lowest rank.")
    backend_model: str | None = None
    upstream: UpstreamSpec | None = None
    capacity_per_replica: bool = Field(
        default=True, description="The dispatcher's limiter multiplies the capacity by the "
        "replicas of the serving deployment that are running (Serve's own count, read every "
        "pool_replicas_poll_s; at least one, and one while Serve cannot be asked), so a "
        "scale-out raises the pool's tokens/s and a lost replica lowers it.")
    replicas_of: str | None = Field(
        default=None, pattern=r"^[^/\s]+/[^/\s]+$",
        description="The Serve deployment (APP/DEPLOYMENT) whose replicas serve the pool, "
        "e.g. a vLLM app's LLMServer behind the pool's upstream. Default: the local model's "
        "deployment for a pool without upstream; none for an upstream pool (fixed capacity).")

    @model_validator(mode="after")
    def _upstream_model_id(self) -> PoolSpec:
        if self.upstream is not None and self.backend_model is None:
            self.backend_model = self.upstream.model
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLAWSTREAM_", extra="ignore")

    state_dir: Path = Field(
        default_factory=default_state_dir,
        description="Runtime data of the local stack: broker logs, Redis dump, pid and log files.",
    )

    # Kafka (single KRaft node on loopback)
    kafka_version: str = "3.9.1"
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    kafka_heap: str = "768m"
    kafka_brokers: int = Field(
        default=1, ge=1,
        description="KRaft nodes `up` starts (each a combined broker + controller). With 3 "
        "or more, topics get replication factor 3 and min.insync.replicas=2, so one broker "
        "may die without losing an acknowledged record.")
    kafka_port_stride: int = Field(
        default=10, ge=2,
        description="Node n (1-based) listens on kafka_port + (n-1) * stride and its "
        "controller on kafka_controller_port + (n-1) * stride.")
    partitions: int = 4
    topic_retention_ms: dict[str, int] = Field(
        default_factory=dict,
        description="Retention per topic name in ms (-1 = forever), over the catalogue's "
        "defaults in streams/topics.py (answers and events forever, work queues 7 days, "
        "dead letters 90 days). Applied when topics are created, and by `up` to existing ones.")

    # Schema registry (Apicurio Registry's Confluent-compatible API; deploy/local)
    schema_registry_enabled: bool = Field(
        default=True, description="Records go out in the Confluent wire format with ids from "
        "the schema registry, which `up` starts (Apicurio Registry, from Maven Central) and "
        "registers this release's schemas in; false: no registry, single-object records.")
    schema_registry_port: int = 8085
    schema_registry_version: str = Field(
        default="2.6.13.Final", description="Apicurio Registry's version (3.x needs Java 21+).")
    schema_registry_heap: str = "256m"

    # Who this process is (least privilege: streams/access.py grants each role its rights)
    auth: bool = Field(
        default=True, description="Kafka asks every client for a SASL/SCRAM principal and "
        "authorises it with ACLs; Redis has one ACL user per role and no default user. "
        "false: both anonymous and open (a stack started so stays so until purged).")
    role: str = Field(
        default="operator", description="The role whose credentials this process uses: "
        "admin, worker, coordinator, tools, inference, gateway, operator or analyst. The CLI "
        "is the operator; `up` starts each component with its own.")
    credentials_file: Path | None = Field(
        default=None, description="This component's secret file (JSON: kafka and redis "
        "username and password; a mounted Secret in a cluster). Unset: the file `up` wrote "
        "for the role, <state_dir>/credentials/<role>.json.")
    kafka_username: str | None = Field(
        default=None, description="With kafka_password, redis_username and redis_password "
        "(a cluster's Secrets as env vars): this component's logins, over any file.")
    kafka_password: SecretStr | None = None
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256"] = "SCRAM-SHA-512"
    redis_username: str | None = None
    redis_password: SecretStr | None = None

    # Redis
    redis_port: int = 6379
    redis_maxmemory: str = "256mb"
    redis_persist: bool = Field(
        default=True,
        description="Append-only file (fsync every second) so the side-effect ledger survives "
        "a Redis restart.",
    )

    # Ray / Ray Serve
    ray_port: int = 6390
    ray_num_cpus: int = 2
    ray_object_store_mb: int = Field(
        default=512,
        description="Plasma store size; Ray's default (30 % of RAM) is far more than we ship.",
    )
    serve_http_port: int = 8000
    inference_backend: str = Field(
        default="llama_cpp",
        description="'llama_cpp' (real SmolLM2 GGUF) or 'simulated' (benchmarks only).",
    )
    simulated_delay_ms: float = 20.0
    max_new_tokens: int = 64
    inference_max_queued_requests: int = Field(
        default=16,
        description="Requests waiting for a busy model replica before Serve answers 503.",
    )
    inference_max_ongoing_requests: int | None = Field(
        default=None,
        description="Concurrent requests per generation replica; None = the backend's default "
        "(2 for llama_cpp, which runs one at a time; 64 for simulated).",
    )
    inference_min_replicas: int = Field(
        default=1, ge=1, description="Replicas of the local model's deployment Serve keeps "
        "up (a warm pool: size it to cover 5-10 % of the daily peak).")
    inference_max_replicas: int = Field(
        default=1, ge=1, description="Replicas Serve may scale the local model's deployment "
        "up to when ongoing requests per replica pass the replica's concurrency "
        "(autoscaling_config); 1 locally (one model on 2 cores), a GPU cluster raises it. "
        "Each local replica reserves one of the local Ray node's CLAWSTREAM_RAY_NUM_CPUS "
        "(the other deployments need 0.8 more): raise that with it, or Serve cannot place "
        "the other apps.")
    inference_retry_after_s: float = Field(
        default=1.0, description="Retry-After sent with an overload (503) answer."
    )
    inference_transport: Literal["http", "handle"] = Field(
        default="http",
        description="How workers call the generator: 'http' (Serve's proxy, then the "
        "generator's route /model/generate) or 'handle' (its DeploymentHandle; the worker "
        "becomes a Ray driver on its first model call: ~8 ms faster per call, Ray in the "
        "worker process; see inference/handle_client.py).",
    )
    inference_lazy_embedder: bool = Field(
        default=True,
        description="Load the embedding model on its first call instead of at deploy: "
        "about 1 GB less while nothing embeds; the first call waits seconds for it.",
    )
    inference_repeat_penalty: float = Field(
        default=1.1, ge=1.0,
        description="llama.cpp repeat penalty: above 1 it stops SmolLM2 looping on a phrase.",
    )
    inference_local_max_tool_calls: int = Field(
        default=1, ge=1,
        description="Tool calls one turn of the local model may make (SmolLM2 allowed more "
        "mostly adds a spurious second call).",
    )
    inference_upstream_max_ongoing_requests: int = Field(
        default=64, ge=1,
        description="Concurrent calls per upstream-model replica (they only wait on sockets).",
    )
    inference_llama_threads: int = Field(
        default=2,
        description="llama.cpp threads of the generation replica (1 is faster on a busy 2-core "
        "machine: ggml threads spin-wait on each other).",
    )

    # Caches (processors/caching) and the price table (clawstream/pricing.py)
    cache_enabled: bool = Field(
        default=True, description="All three caches; off = every call goes to the model/tool."
    )
    cache_timeout_s: float = Field(
        default=0.25, description="A cache round trip slower than this is a miss, not a wait."
    )
    prompt_cache_ttl_s: float = Field(
        default=300.0, description="Prompt-output TTL unless the agent sets its own (60-300)."
    )
    prompt_cache_max_temperature: float = Field(
        default=0.3, description="Only steps at or below this temperature are cached."
    )
    tool_cache_ttl_s: float = Field(
        default=60.0, description="Tool-result TTL unless the tool declares its own."
    )
    tool_cache_max_ttl_s: float = Field(default=900.0, description="Ceiling of any tool TTL.")
    embedding_cache_ttl_s: float | None = Field(
        default=None, description="None: embeddings live until their content hash changes."
    )
    cache_outage_event_interval_s: float = Field(
        default=5.0, description="At most one cache_unavailable event per layer this often."
    )
    prices: dict[str, dict[str, float]] = Field(
        default_factory=lambda: {
            "smollm2-135m-instruct-q4_1": {"input_per_1k": 0.0002, "output_per_1k": 0.0008},
            "simulated-echo": {"input_per_1k": 0.0002, "output_per_1k": 0.0008},
            "all-MiniLM-L6-v2": {"input_per_1k": 0.00002, "output_per_1k": 0.0},
        },
        description="USD per 1k input/output tokens by served model id (illustrative figures "
        "for the local models, shaped like a hosted provider's price list).",
    )

    # Faust worker
    app_id: str = "clawstream"
    worker_web_port: int = 6066
    worker_web_bind: str = Field(
        default="127.0.0.1",
        description="Address the worker's web server (/metrics) binds; 0.0.0.0 in a pod, so "
        "Prometheus can scrape it.")
    worker_count: int = Field(
        default=1, description="Faust workers `up` starts; worker i serves on web port + i."
    )
    worker_restart_backoff_s: float = Field(
        default=0.5, description="A supervisor starts a worker that exited on a failure "
        "again after this long, doubled for each quick failure in a row.")
    worker_restart_backoff_cap_s: float = Field(default=30.0, description="Longest backoff.")
    worker_restart_healthy_s: float = Field(
        default=30.0, description="A worker that ran at least this long before it exited was "
        "not crash-looping: the count of quick failures and the backoff start over.")
    worker_restart_limit: int = Field(
        default=5, ge=0, description="Quick failures in a row after which the supervisor "
        "gives up (a crash loop); `clawstream status` shows it, `up` starts it again.")
    rocksdb_block_cache_mb: int = 8
    worker_session_timeout_s: float = Field(
        default=10.0,
        description="A worker silent this long (SIGKILL, hang) loses its partitions to the "
        "others. Faust's default (60 s) is a minute of stalled conversations per crash; below "
        "~6 s the broker refuses it (group.min.session.timeout.ms).",
    )

    worker_stall_timeout_s: float = Field(
        default=30.0, gt=0,
        description="Records waiting this long on a partition of the coordinator's topics "
        "(from when they were first seen waiting) with no progress mean the worker is "
        "wedged: it replaces itself "
        "(processors/stall.py). Well above Faust's commit interval (2.8 s) and a rebalance.",
    )

    log_repeat_interval_s: float = Field(
        default=10.0, description="A worker logs a repeated warning or error once per this "
        "interval, with the count of the repeats it dropped (0 = every line).")

    # Contracts: time budgets and retries (processors/policy.py turns them into decisions)
    interactive_step_timeout_s: float = Field(
        default=20.0, description="Run-time limit of one step in the interactive lane."
    )
    batch_step_timeout_s: float = Field(
        default=60.0, description="Run-time limit of one step in the batch lane."
    )
    step_budget_factor: float = Field(
        default=3.0,
        description="No result within this many run-time limits: the coordinator re-issues the "
        "step (next attempt) or fails it.",
    )
    request_deadline_s: float = Field(
        default=120.0,
        description="Default deadline of an interactive request; past it, it is answered.",
    )
    batch_request_deadline_s: float = Field(
        default=3600.0,
        description="Default deadline of a batch request: batch work waits behind interactive "
        "work by design, so it gets hours, not minutes.",
    )
    model_max_attempts: int = Field(default=3, ge=1)
    retry_base_ms: int = Field(
        default=250, description="Backoff ceiling of the first retry; it doubles per attempt."
    )
    retry_cap_ms: int = Field(default=8000, description="Largest backoff ceiling.")
    sweep_interval_s: float = Field(
        default=0.25, description="How often the coordinator looks for due retries and budgets."
    )
    drain_timeout_s: float = Field(
        default=15.0, description="SIGTERM: how long a worker waits for in-flight steps."
    )
    ledger_lease_s: float = Field(
        default=5.0, gt=0,
        description="A mutating step's claim in the side-effect ledger lasts this long and "
        "is renewed while the step runs: a crashed execution's claim frees within it.")
    fault_injection: bool = Field(
        default=False,
        description="The inference app's /faults endpoint (injected model failures). Test, "
        "benchmark and chaos stacks only.",
    )
    agent_modules: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Python modules with the team's agents and tools, each with a "
        "register(registry) function, loaded by every worker after the built-in examples: "
        "comma-separated (CLAWSTREAM_AGENT_MODULES=myco.agents,myco.tools) or a JSON list.",
    )

    @model_validator(mode="after")
    def _one_upstream_per_model(self) -> Settings:
        upstream_models(self.pools)  # raises on a model id served two different ways
        return self

    @field_validator("agent_modules", mode="before")
    @classmethod
    def _module_list(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [name.strip() for name in text.split(",") if name.strip()]
        return value

    # Flow control (issue 5; see processors/flow/): entrance buckets, model pools,
    # budgets, context. Operators override limits at run time with `clawstream flags`.
    user_rate_per_s: float = Field(default=5.0, description="Requests/s per user (bucket refill).")
    user_burst: float = 10.0
    tenant_rate_per_s: float = Field(default=20.0, description="Requests/s per tenant.")
    tenant_burst: float = 40.0
    entrance_clock_skew_s: float = Field(
        default=5.0, ge=0, description="Entrance limits count a request at its created time; "
        "a created time later than Redis' clock by more than this counts as that clock plus "
        "this (a client's clock may be ahead, but cannot book future windows).")
    entrance_reorder_s: float = Field(
        default=120.0, gt=0, description="How far behind a client's newest admitted request "
        "another may arrive and still be counted at its own time (after an outage partitions "
        "catch up at different speeds); older ones count at this bound.")
    pools: dict[str, PoolSpec] = Field(
        default_factory=lambda: {
            "small": PoolSpec(capacity_tokens_per_s=1200.0, rank=0),
            "large": PoolSpec(capacity_tokens_per_s=800.0, rank=1),
        },
        description="Logical model pools: stated capacity (prompt + output tokens/s) and the "
        "backend model serving them (None = the Serve app's only generation model).",
    )
    task_pools: dict[str, str] = Field(
        default_factory=lambda: {"interface": "small", "chat": "small", "research": "large",
                                 "report": "large"},
        description="An agent's task class picks its model pool.",
    )
    pool_headroom: float = Field(
        default=0.15, ge=0.0, lt=1.0,
        description="The tokens/s limiter runs this fraction under a pool's stated capacity.",
    )
    pool_burst_s: float = Field(default=1.0, description="Bucket depth in seconds of rate.")
    pool_replicas_poll_s: float = Field(
        default=5.0, gt=0, description="How often a worker asks the Serve app how many "
        "replicas each deployment runs (pools with capacity_per_replica follow it).")
    dispatch_buffer_per_lane: int = Field(
        default=8, description="Step commands a dispatcher holds per lane before it pauses "
        "that lane's partitions.")
    dispatch_concurrency: int = Field(default=4, description="Model calls in flight per worker.")
    tool_concurrency: int = Field(default=4, description="Tool calls in flight per worker.")
    model_max_tokens: int = Field(
        default=1024, ge=1, le=1024, description="The most tokens a governed model call may "
        "ask for (``max_tokens``/``max_completion_tokens``); above it the gateway answers 400. "
        "At most the inference app's own limit (1024).")
    stream_delta_flush_ms: float = Field(
        default=20.0, ge=0, description="A streamed model step publishes its new text at "
        "most this often (the first piece at once): one delta record per token would cost "
        "a fast model more than its tokens.")
    dispatch_interactive_reserved: int = Field(
        default=1, description="Call slots per worker the batch lane may never take, so an "
        "interactive step does not wait for a batch call to finish.")
    batch_token_reserve: float = Field(
        default=0.25, ge=0.0, lt=1.0,
        description="Share of a pool's token bucket the batch lane leaves for interactive "
        "steps: a flood empties the bucket only down to this level.")
    coordinator_batch_active: int = Field(
        default=32, description="Batch requests a worker's coordinator runs at once; more wait "
        "in Kafka, not in front of interactive requests.")
    worker_stream_buffer: int = Field(
        default=2048, description="Messages Faust buffers per partition. At 80 % it stops "
        "fetching the partition (that is how a blocked lane stops its fetching); the last "
        "20 % must hold what is already fetched (worker_max_poll_records), or Faust's delivery "
        "loop blocks every stream of the worker.")
    worker_max_poll_records: int = Field(
        default=200, description="Records per fetch; keep it under 20 % of "
        "worker_stream_buffer (see there).")
    tenant_budget_window_s: int = 3600
    tenant_budget_tokens: int = 2_000_000
    tenant_budget_cost_usd: float = 50.0
    conversation_max_steps: int = 64
    conversation_token_budget: int = 200_000
    context_exchanges: int = Field(
        default=6, ge=1, description="Exchanges kept in the prompt (4-8 is sensible); older "
        "ones are found by the recall tool.")
    flag_poll_s: float = Field(default=0.2, description="How often flag readers poll.")

    # Sub-agents (issue 15; processors/delegation.py): the runtime's ceilings over what
    # agents declare, and how a parent's deadline and budget are shared with its children.
    delegation_max_depth: int = Field(
        default=3, ge=0, description="Deepest level of sub-agents below a client's request, "
        "whatever the agents declare (0: no delegation at all).")
    delegation_max_fanout: int = Field(
        default=64, ge=1, description="Sub-agents one request may run at once, whatever its "
        "agent declares.")
    delegation_reserve_ms: int = Field(
        default=2000, ge=0, description="A child's deadline is this much before its parent's "
        "(at most a quarter of the parent's remaining time), so the parent has time to use "
        "the answer.")
    delegation_budget_share: float = Field(
        default=0.8, gt=0.0, le=1.0, description="Share of a parent's remaining token and "
        "cost budget that the children of one turn get together (split evenly); the rest "
        "stays for the parent's own steps.")
    delegation_grace_ms: int = Field(
        default=5000, ge=0, description="A delegation with no answer this long after the "
        "child's deadline is given up (a child answers by its deadline: this only covers a "
        "lost answer).")

    # HTTP gateway (gateway/): native API and the OpenAI-compatible edge
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8080
    gateway_workers: int = Field(
        default=1, ge=1, description="uvicorn processes behind the gateway's port; each has "
        "its own answer index (it reads every partition) and joins the recorder group.")
    gateway_record_ttl_s: int = Field(
        default=86_400, gt=0, description="How long a request's record (status, answer, "
        "events) and its idempotency key stay in Redis for late readers.")
    gateway_max_body_bytes: int = Field(
        default=1_000_000, gt=0, description="Larger request bodies are refused (413).")
    gateway_max_text_chars: int = Field(
        default=32_000, gt=0, description="Longest request text or message content.")
    gateway_body_timeout_s: float = Field(
        default=10.0, gt=0, description="A client that takes longer to send its body gets "
        "408: slow clients do not hold a connection and a request slot.")
    gateway_max_inflight: int = Field(
        default=512, gt=0, description="Requests one gateway process waits on at once; more "
        "are answered 503 overloaded (the client's failover or retry takes them).")
    gateway_max_request_lag: int = Field(
        default=2000, gt=0, description="Requests published and not yet taken by the "
        "coordinators (consumer lag of the interactive lane) above which new requests get "
        "503 overloaded: the workers stopped fetching (backpressure).")
    gateway_wait_grace_s: float = Field(
        default=2.0, ge=0, description="How long past a request's deadline the gateway waits "
        "for the coordinator's own deadline answer before it gives up with 504.")
    gateway_key_ttl_days: float = Field(
        default=90.0, ge=0, description="A new API key expires after this many days (0: "
        "never); `clawstream keys rotate` replaces one with a grace period.")
    gateway_key_cache_s: float = Field(
        default=5.0, ge=0, description="API-key lookups are cached this long per process: a "
        "revoked key stops working within this time.")
    gateway_keepalive_s: float = Field(
        default=15.0, gt=0, description="SSE comment sent when a stream has been quiet this "
        "long, so proxies keep the connection.")
    gateway_max_poll_wait_s: float = Field(
        default=60.0, gt=0, description="Longest ``?wait=`` of GET /v1/requests/{id}.")

    # Safe change (issue 17): regression sets (`clawstream eval`) and canaries of agent
    # versions (`clawstream canary`, processors/canary/).
    eval_tenant: str = Field(
        default="eval", description="The tenant an eval's requests run as (batch lane), kept "
        "out of the live figures of `canary status` and of the rollback watcher.")
    eval_concurrency: int = Field(default=8, ge=1, description="Scenarios an eval runs at once.")
    eval_answer_timeout_s: float = Field(
        default=300.0, gt=0, description="How long an eval waits for one answer.")
    eval_min_pass_rate: float = Field(
        default=1.0, ge=0.0, le=1.0,
        description="`clawstream eval` exits 1 when a run passes fewer scenarios than this.")
    canary_watch: bool = Field(
        default=True, description="Workers watch canaries and roll a failing candidate back.")
    canary_watch_interval_s: float = Field(
        default=2.0, gt=0, description="How often the watcher judges the canaries.")
    canary_max_error_margin: float = Field(
        default=0.10, ge=0.0,
        description="Roll back when the candidate's failed+degraded rate is above the current "
        "version's by more than this (absolute: 0.10 = ten points).")
    canary_p95_margin: float = Field(
        default=0.5, ge=0.0,
        description="Roll back when the candidate's p95 latency is above the current "
        "version's by more than this fraction (0.5 = 50 % slower) ...")
    canary_p95_min_delta_ms: float = Field(
        default=250.0, ge=0.0, description="... and by at least this many milliseconds.")
    canary_min_sample: int = Field(
        default=30, ge=1,
        description="Requests each version must have run before the watcher judges.")

    # Sizes (issue 11): every record stays well under Kafka's message limit, so a large
    # request is refused at the entrance instead of breaking a state write later.
    max_request_chars: int = Field(
        default=100_000, ge=1,
        description="A request's text longer than this is rejected at the entrance (~25k "
        "tokens: more than a context window of the local models).")
    context_exchange_chars: int = Field(
        default=8_000, ge=100,
        description="Each side of an exchange is kept in the conversation's state (for the "
        "next prompts) up to this many characters; the recall archive keeps it whole.")
    kafka_max_message_bytes: int = Field(
        default=8 * 1024 * 1024,
        description="Largest record our topics, the broker and our producers accept.")
    answer_check_lookback_s: float = Field(
        default=900.0, gt=0,
        description="Before sending an answer, a worker checks the answers its partition "
        "already holds from this far back (read once per partition after each rebalance): an "
        "event handled again after a crash answers no second time. It must outlast the "
        "longest time from a crash to the event read again (session timeout, restart, "
        "an outage).")
    max_state_bytes: int = Field(
        default=4 * 1024 * 1024,
        description="A conversation state larger than this (as stored) is not written: its "
        "request is answered failed, with the reason.")

    # Observability (issue 14): every process serves /metrics; Ray's metrics agent serves
    # the Serve app's on its own port; `up` runs a Prometheus that scrapes them all.
    ray_metrics_port: int = Field(
        default=6392, description="Where the Ray head node's metrics agent serves the Serve "
        "app's metrics (and Ray's own) for Prometheus.")
    prometheus_enabled: bool = Field(
        default=True, description="`up` starts a Prometheus (Debian's package) scraping "
        "every process of the stack; false leaves it out.")
    prometheus_port: int = 9090
    otlp_endpoint: str | None = Field(
        default=None, pattern=r"^https?://",
        description="An OTLP/HTTP collector's base URL (e.g. http://otel-collector:4318): "
        "each worker exports the spans of every answered request to <url>/v1/traces. "
        "None: no spans exported.")
    prometheus_scrape_interval_s: float = Field(
        default=5.0, gt=0, description="How often Prometheus scrapes each process.")
    kafka_bootstrap: str | None = Field(
        default=None,
        description="Brokers to dial instead of the local stack's loopback ones (a cluster: "
        "e.g. Strimzi's clawstream-kafka-bootstrap:9092, see deploy/k8s).")
    redis_host: str = Field(default="127.0.0.1", description="Where Redis runs (a cluster: "
                            "its Service name).")
    serve_host: str = Field(default="127.0.0.1", description="Where Ray Serve's HTTP proxy "
                            "runs (a cluster: the RayService's serve Service).")
    schema_registry_host: str = Field(default="127.0.0.1", description="Where the schema "
                                      "registry runs (a cluster: its Service name).")

    # Cold archive (`clawstream archive`, streams/archive.py): finished requests' records as
    # Parquet, so the hot topics may keep a short retention and the audit trail stays whole.
    archive_url: str = Field(
        default="", description="Where `clawstream archive` writes: a directory or any fsspec "
        "URL (s3://bucket/prefix in a cluster), partitioned tenant=/day=. Empty: "
        "<state_dir>/archive.")
    archive_grace_s: float = Field(
        default=7200.0, gt=0, description="A request still unanswered this long after its "
        "first record is archived as it stands, and an archived answer is remembered this "
        "long for records that arrive after it (a late step result). Longer than any "
        "request's deadline (batch_request_deadline_s), shorter than the hot topics' "
        "retention.")

    @model_validator(mode="after")
    def _archive_under_state_dir(self) -> Settings:
        if not self.archive_url:
            self.archive_url = str(self.state_dir / "archive")
        return self

    @property
    def bootstrap_servers(self) -> str:
        """Every broker, so a client still bootstraps while one of them is down."""
        if self.kafka_bootstrap:
            return self.kafka_bootstrap
        return ",".join(f"127.0.0.1:{self.kafka_node_port(n)}" for n in self.kafka_nodes)

    @property
    def kafka_nodes(self) -> range:
        """The KRaft node ids, 1..kafka_brokers."""
        return range(1, self.kafka_brokers + 1)

    def kafka_node_port(self, node: int) -> int:
        return self.kafka_port + (node - 1) * self.kafka_port_stride

    def kafka_node_controller_port(self, node: int) -> int:
        return self.kafka_controller_port + (node - 1) * self.kafka_port_stride

    @property
    def topic_replication_factor(self) -> int:
        """3 from three brokers on (one may fail), else as many as there are."""
        return min(3, self.kafka_brokers)

    @property
    def min_insync_replicas(self) -> int:
        """2 of 3 replicas must have a record before acks=all succeeds: a single broker's
        loss neither loses an acknowledged record nor stops producers."""
        return 2 if self.topic_replication_factor >= 3 else 1

    @property
    def credentials_path(self) -> Path:
        return self.credentials_file or credentials_dir(self.state_dir) / f"{self.role}.json"

    def credentials(self) -> Credentials | None:
        """This process's principal (None with auth off); read when a client is made, so a
        rotated secret is taken by the next client without a restart of the settings."""
        if not self.auth:
            return None
        if self.kafka_username is not None:
            return self._credentials_from_env()
        return Credentials.load(self.credentials_path)

    def _credentials_from_env(self) -> Credentials:
        given = {"kafka_password": self.kafka_password, "redis_username": self.redis_username,
                 "redis_password": self.redis_password}
        missing = [f"CLAWSTREAM_{k.upper()}" for k, v in given.items() if v is None]
        if missing or self.kafka_username is None or self.kafka_password is None \
                or self.redis_password is None or self.redis_username is None:
            raise CredentialsError(f"CLAWSTREAM_KAFKA_USERNAME is set but {', '.join(missing)} "
                                   "not: a component's logins come as the four together")
        return Credentials(
            role=self.role,
            kafka=Login(username=self.kafka_username,
                        password=self.kafka_password.get_secret_value(),
                        mechanism=self.kafka_sasl_mechanism),
            redis=Login(username=self.redis_username,
                        password=self.redis_password.get_secret_value()))

    def kafka_security(self) -> dict[str, str]:
        """librdkafka's security settings for this process's principal."""
        creds = self.credentials()
        if creds is None:
            return {}
        return {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": creds.kafka.mechanism,
                "sasl.username": creds.kafka.username, "sasl.password": creds.kafka.password}

    @property
    def redis_url(self) -> str:
        creds = self.credentials()
        login = "" if creds is None else (
            f"{quote(creds.redis.username, safe='')}:{quote(creds.redis.password, safe='')}@")
        return f"redis://{login}{self.redis_host}:{self.redis_port}/0"

    @property
    def schema_registry_url(self) -> str:
        """The registry's Confluent-compatible API: the base URL Confluent's clients take."""
        return (f"http://{self.schema_registry_host}:{self.schema_registry_port}"
                "/apis/ccompat/v7")

    @property
    def serve_url(self) -> str:
        return f"http://{self.serve_host}:{self.serve_http_port}"

    @property
    def gateway_url(self) -> str:
        return f"http://{self.gateway_host}:{self.gateway_port}"

    @property
    def ray_address(self) -> str:
        return f"127.0.0.1:{self.ray_port}"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"


def upstream_models(pools: dict[str, PoolSpec]) -> dict[str, UpstreamSpec]:
    """Served model id -> the upstream serving it, over all pools. Two pools may share a
    model id only when they name the same upstream for it: the Serve app routes a request by
    model id alone."""
    found: dict[str, UpstreamSpec] = {}
    for name, pool in pools.items():
        if pool.upstream is None or pool.backend_model is None:
            continue
        other = found.setdefault(pool.backend_model, pool.upstream)
        if other != pool.upstream:
            raise ValueError(
                f"pool {name}: model {pool.backend_model!r} is already served by another "
                "upstream; give one of them a different backend_model"
            )
    return found


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
