"""Every Prometheus metric clawstream exports, named once, for every process.

Why one module: the workers (coordinator, inference dispatcher, tool executor), the gateway
and the Serve app each export a share of these, and the Grafana dashboard, ``clawstream
top`` and the tests name them. A name defined here is the only spelling; a test checks the
dashboard's PromQL against :data:`NAMES`.

Labels are bounded on purpose: lane, status, reason kinds, event types, step types, model
pools, tool names, cache layers, topics and partitions, HTTP routes, tenants (the unit cost
is billed to). Never request, conversation, step or user ids: each new value is a new
series in Prometheus for ever.

The Serve app runs in Ray's replica processes, where Ray's own metrics agent exports
(``ray.util.metrics``, served on the head node's metrics export port, prefixed ``ray_``);
its names live here too (:data:`SERVE_NAMES`), without the prefix Ray adds.

Recording costs a dict lookup and a lock per label set (prometheus-client's children are
cached), so it is done on the hot path of the coordinator directly.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PREFIX = "clawstream_"

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0,
                   60.0, 120.0, 300.0)
"""Seconds: from a cache hit (milliseconds) to a batch request of many model steps."""
WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                30.0, 60.0)
"""Seconds a record waits in a topic or on the way back: usually milliseconds."""

# -- the coordinator: requests and answers --------------------------------------------
REQUEST_LATENCY = Histogram(
    "clawstream_request_latency_seconds",
    "End-to-end time of a request: created at the entrance to answered by the coordinator; "
    "kind is request (from a client) or subagent (a delegated child)",
    ["kind", "status"], buckets=LATENCY_BUCKETS)
ANSWERS = Counter(
    "clawstream_answers_total",
    "Answers by status (ok, degraded, rejected, failed) and reason kind (none when ok)",
    ["status", "reason_kind"])
EVENTS = Counter(
    "clawstream_events_total",
    "Audit events by type: retries (retry_scheduled), timeouts (step_timed_out), "
    "rejections, duplicates, dead letters, cancels ...", ["event_type"])
DEAD_LETTERS = Counter(
    "clawstream_dead_letters_total", "Records sent to the DLQ, by source topic and error class",
    ["source_topic", "error_class"])
TENANT_COST = Counter(
    "clawstream_tenant_cost_usd_total", "USD spent on answered top-level requests, by tenant",
    ["tenant"])
TENANT_TOKENS = Counter(
    "clawstream_tenant_tokens_total", "Tokens billed to answered top-level requests, by "
    "tenant and direction (in: prompt, out: completion)", ["tenant", "direction"])
RESULT_BACK = Histogram(
    "clawstream_result_back_seconds",
    "From a step's result being sent (finished) to the coordinator handling it",
    ["step_type"], buckets=WAIT_BUCKETS)

# -- the dispatcher and the tool executor: steps ----------------------------------------
QUEUE_WAIT = Histogram(
    "clawstream_queue_wait_seconds",
    "From a step command's issue to its start on an executor (topic, buffers, limiter)",
    ["topic", "lane"], buckets=WAIT_BUCKETS)
STEP_RUN = Histogram(
    "clawstream_step_run_seconds", "Run time of a step attempt, by kind, tool or model "
    "pool, and outcome", ["step_type", "name", "status"], buckets=LATENCY_BUCKETS)
STEP_TOKENS = Counter(
    "clawstream_step_tokens_total", "Tokens of model steps by pool and direction "
    "(in: prompt, out: completion); cache hits bill none", ["pool", "direction"])
STEP_COST = Counter(
    "clawstream_step_cost_usd_total", "USD of step attempts by pool or tool", ["name"])
IN_FLIGHT = Gauge(
    "clawstream_steps_in_flight", "Steps running on this worker now", ["executor"])
BUFFERED = Gauge(
    "clawstream_steps_buffered", "Step commands fetched and waiting for a slot or for the "
    "limiter, by executor and lane", ["executor", "lane"])
HELD = Gauge(
    "clawstream_dispatch_held", "1 while an executor stops fetching (backpressure from "
    "inference, or draining)", ["executor"])
LIMITER_REFUSALS = Counter(
    "clawstream_limiter_refusals_total", "Admissions the tokens-per-second bucket of a "
    "model pool refused (the step waited and asked again)", ["pool"])
POOL_RATE = Gauge(
    "clawstream_pool_rate_tokens_per_second", "The refill rate of a model pool's bucket at "
    "its last admission (settings, flags and the pool's running replicas)", ["pool"])
POOL_LEVEL = Gauge(
    "clawstream_pool_bucket_tokens", "Tokens left in a model pool's bucket at its last "
    "admission", ["pool"])
POOL_REPLICAS = Gauge(
    "clawstream_pool_replicas", "Running replicas of the Serve deployment serving a model "
    "pool, as the worker last read them (its limiter's capacity is per replica)", ["pool"])

# -- caches and Redis (workers) ---------------------------------------------------------
CACHE_LOOKUPS = Counter("clawstream_cache_lookups_total", "Cache look-ups by layer and "
                        "outcome", ["layer", "outcome"])
CACHE_SAVED_TOKENS = Counter("clawstream_cache_saved_tokens_total", "Tokens not billed "
                             "thanks to a cache hit", ["layer"])
CACHE_SAVED_COST = Counter("clawstream_cache_saved_cost_usd_total", "USD not spent thanks to "
                           "a cache hit", ["layer"])
CACHE_ERRORS = Counter("clawstream_cache_errors_total", "Cache operations that failed and "
                       "were treated as misses (Redis down or slow)", ["layer", "op"])
REDIS_FAIL_OPEN = Counter("clawstream_redis_fail_open_total", "Checks skipped (work let "
                          "through) because Redis failed", ["check"])

# -- consumer lag (workers; a collector reads the consumer's offsets at scrape time) -------
CONSUMER_LAG = "clawstream_consumer_lag"
"""Gauge family: records behind the end of the partition, by group, topic and partition."""

# -- the gateway ------------------------------------------------------------------------
HTTP_LATENCY = Histogram(
    "clawstream_gateway_request_seconds", "Gateway HTTP time by route template, method and "
    "status code", ["route", "method", "code"], buckets=LATENCY_BUCKETS)
GATEWAY_REFUSALS = Counter(
    "clawstream_gateway_refusals_total", "Gateway error answers by HTTP status and error "
    "code (rate limits, overload, validation ...)", ["status", "code"])

# -- the Serve app (ray.util.metrics: exported by Ray with the ``ray_`` prefix) -----------
SERVE_GENERATE_SECONDS = "clawstream_serve_generate_seconds"
"""Histogram: a generation call inside its model replica, by model and outcome."""
SERVE_TOKENS = "clawstream_serve_tokens"
"""Counter: tokens generated and read by the model replicas, by model and direction."""
SERVE_NAMES = (SERVE_GENERATE_SECONDS, SERVE_TOKENS)
RAY_PREFIX = "ray_"


def _sample_names() -> frozenset[str]:
    """Every series name a scrape of our processes can carry (histograms' and counters'
    suffixes included), for checking PromQL written elsewhere against them."""
    names: set[str] = {CONSUMER_LAG}
    for value in list(globals().values()):
        if isinstance(value, Histogram):
            base = value._name  # type: ignore[attr-defined]
            names |= {base, f"{base}_bucket", f"{base}_sum", f"{base}_count"}
        elif isinstance(value, Counter):
            base = value._name  # type: ignore[attr-defined]
            names |= {f"{base}_total", f"{base}_created"}
        elif isinstance(value, Gauge):
            names.add(value._name)  # type: ignore[attr-defined]
    for base in SERVE_NAMES:
        ray = RAY_PREFIX + base
        names |= {ray, f"{ray}_bucket", f"{ray}_sum", f"{ray}_count", f"{ray}_total"}
    return frozenset(names)


NAMES = _sample_names()
"""The names of every series we export (see :func:`_sample_names`)."""
