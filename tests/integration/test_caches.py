"""The three caches against the real Redis and the real Serve app (SmolLM2, MiniLM).

Each key rule is checked both ways: the same input hits, and changing any one part of the
key misses. Generation goes to the real model; counting calls of a wrapper around it is how
a test sees whether the cache answered.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from clawstream.config import Settings
from clawstream.inference.client import GenerationResult, InferenceClient
from clawstream.processors.caching import CacheControl, Caches, collecting

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


@dataclass(frozen=True)
class Spec:
    """A tool declaration as ``clawstream.processors.tools`` has them (name, version,
    mutating...)."""

    name: str
    version: str = "1"
    mutating: bool = False
    cache_ttl_s: float | None = None
    cache_params: tuple[str, ...] | None = None


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def inference(stack: Settings) -> AsyncIterator[InferenceClient]:
    async with InferenceClient(stack.serve_url, timeout=120.0) as client:
        yield client


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def caches(stack: Settings, inference: InferenceClient, clock: Clock
                 ) -> AsyncIterator[Caches]:
    layer = Caches(stack, inference, clock=clock)
    yield layer
    await layer.store.aclose()


class Model:
    """The real model, counting how often it is actually called."""

    def __init__(self, inference: InferenceClient) -> None:
        self.inference = inference
        self.calls = 0

    async def __call__(self, call: dict[str, Any]) -> GenerationResult:
        self.calls += 1
        return await self.inference.generate(call["messages"], max_tokens=call["max_tokens"],
                                             temperature=call["temperature"])


def _call(question: str, **overrides: Any) -> dict[str, Any]:
    call = {"model": "default", "prompt_version": "p1", "max_tokens": 8, "temperature": 0.0,
            "messages": [{"role": "system", "content": "Answer briefly."},
                         {"role": "user", "content": question}],
            "tools": [], "tool_choice": None}
    call.update(overrides)
    return call


async def _model_step(caches: Caches, model: Model, call: dict[str, Any],
                      control: CacheControl | None = None) -> Any:
    with collecting() as report:
        outcome = await caches.model_step(call, control or CacheControl(), report,
                                          lambda: model(call))
    return outcome, report


async def test_prompt_cache_same_call_hits_with_savings(caches: Caches,
                                                        inference: InferenceClient) -> None:
    model = Model(inference)
    call = _call(f"What is a Kafka topic? {uuid.uuid4().hex}")
    first, _ = await _model_step(caches, model, call)
    second, report = await _model_step(caches, model, call)
    assert model.calls == 1
    assert not first.cache_hit and second.cache_hit
    assert second.output == first.output
    assert first.usage["cost_usd"] > 0 and first.usage["prompt_tokens"] > 0
    tokens = first.usage["prompt_tokens"] + first.usage["completion_tokens"]
    assert second.usage["saved_tokens"] == tokens
    assert second.usage["saved_cost_usd"] == pytest.approx(first.usage["cost_usd"])
    assert second.usage["cost_usd"] == 0 and second.usage["prompt_tokens"] == 0
    assert report.records() == [{"layer": "prompt", "hits": 1, "misses": 0,
                                 "saved_tokens": tokens,
                                 "saved_cost_usd": pytest.approx(first.usage["cost_usd"])}]


@pytest.mark.parametrize("change", [
    {"prompt_version": "p2"},
    {"max_tokens": 9},
    {"temperature": 0.2},
    {"model": "small"},
    {"messages": "context"},
    {"messages": "system"},
])
async def test_prompt_cache_any_key_field_changed_misses(
        caches: Caches, inference: InferenceClient, change: dict[str, Any]) -> None:
    model = Model(inference)
    question = f"Name a queue. {uuid.uuid4().hex}"
    base = _call(question)
    await _model_step(caches, model, base)
    if change.get("messages") == "context":
        change = {"messages": [*base["messages"][:1],
                               {"role": "user", "content": "earlier"},
                               {"role": "assistant", "content": "reply"},
                               base["messages"][1]]}
    elif change.get("messages") == "system":
        change = {"messages": [{"role": "system", "content": "Answer very briefly."},
                               base["messages"][1]]}
    changed, _ = await _model_step(caches, model, {**base, **change})
    assert not changed.cache_hit
    assert model.calls == 2
    again, _ = await _model_step(caches, model, base)
    assert again.cache_hit, "the unchanged call should still hit"


async def test_prompt_cache_model_id_is_part_of_the_key(caches: Caches,
                                                        inference: InferenceClient) -> None:
    call = _call(f"Why cache? {uuid.uuid4().hex}")
    model_id = await caches.models.get("generation")
    assert caches.prompt.key(call, model_id) != caches.prompt.key(call, model_id + "-v2")
    model = Model(inference)
    await _model_step(caches, model, call)
    caches.models.note("generation", "another-model")  # as if the app served another model
    outcome, _ = await _model_step(caches, model, call)
    assert not outcome.cache_hit and model.calls == 2


async def test_hot_steps_are_not_cached(caches: Caches, inference: InferenceClient,
                                        stack: Settings) -> None:
    model = Model(inference)
    call = _call(f"Tell a story. {uuid.uuid4().hex}",
                 temperature=stack.prompt_cache_max_temperature + 0.1)
    for _ in range(2):
        outcome, report = await _model_step(caches, model, call)
        assert not outcome.cache_hit and report.records() == []
    assert model.calls == 2
    assert await caches.store.redis.keys(caches.prompt.key(call, "*")) == []


async def test_request_opt_out_and_max_age(caches: Caches, inference: InferenceClient,
                                           clock: Clock) -> None:
    model = Model(inference)
    call = _call(f"Where are offsets kept? {uuid.uuid4().hex}")
    await _model_step(caches, model, call)
    opted_out, report = await _model_step(caches, model, call, CacheControl(enabled=False))
    assert not opted_out.cache_hit and report.records() == [] and model.calls == 2
    clock.now += 30  # the entry is now 30 s old
    stale, _ = await _model_step(caches, model, call, CacheControl(max_age_s=10))
    assert not stale.cache_hit and model.calls == 3
    # the miss above stored a fresh entry (age 0), which a 10 s bound accepts
    fresh, _ = await _model_step(caches, model, call, CacheControl(max_age_s=10))
    assert fresh.cache_hit and model.calls == 3
    clock.now += 5
    assert (await _model_step(caches, model, call, CacheControl(max_age_s=60)))[0].cache_hit


async def _wait_expired(caches: Caches, key: str, timeout_s: float = 10.0) -> None:
    """Wait on Redis's own expiry: PTTL is -2 once the key is gone."""
    deadline = time.monotonic() + timeout_s
    while await caches.store.redis.pttl(key) != -2:
        assert time.monotonic() < deadline, f"{key} never expired"
        await asyncio.sleep(0.05)


async def test_prompt_entry_expires_after_its_ttl(caches: Caches,
                                                  inference: InferenceClient) -> None:
    model = Model(inference)
    call = _call(f"Short-lived? {uuid.uuid4().hex}")
    control = CacheControl(ttl_s=0.5)
    await _model_step(caches, model, call, control)
    key = caches.prompt.key(call, await caches.models.get("generation"))
    ttl_ms = await caches.store.redis.pttl(key)
    assert 0 < ttl_ms <= 500
    assert (await _model_step(caches, model, call, control))[0].cache_hit
    await _wait_expired(caches, key)
    outcome, _ = await _model_step(caches, model, call, control)
    assert not outcome.cache_hit and model.calls == 2


async def test_default_prompt_ttl_applies(caches: Caches, inference: InferenceClient,
                                          stack: Settings) -> None:
    call = _call(f"Default TTL? {uuid.uuid4().hex}")
    await _model_step(caches, Model(inference), call)
    ttl_ms = await caches.store.redis.pttl(caches.prompt.key(
        call, await caches.models.get("generation")))
    assert stack.prompt_cache_ttl_s * 1000 - 5000 < ttl_ms <= stack.prompt_cache_ttl_s * 1000


class Tool:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, arguments: dict[str, Any]) -> str:
        self.calls += 1
        return f"result {self.calls} for {arguments.get('city')}"


async def _tool_step(caches: Caches, spec: Spec, tool: Tool, arguments: dict[str, Any],
                     control: CacheControl | None = None) -> Any:
    with collecting() as report:
        return await caches.tool_step(spec, arguments, control or CacheControl(), report,
                                      lambda: tool(arguments))


async def test_tool_cache_keys_on_declared_critical_params(caches: Caches) -> None:
    spec = Spec(name=f"weather-{uuid.uuid4().hex[:6]}", cache_params=("city", "units"))
    tool = Tool()
    args = {"city": "Lyon", "units": "C", "note": "asked by the planner"}
    first = await _tool_step(caches, spec, tool, args)
    again = await _tool_step(caches, spec, tool, {**args, "note": "a different note"})
    assert not first.cache_hit and again.cache_hit and again.output == first.output
    assert tool.calls == 1
    for changed_spec, changed_args in [
        (spec, {**args, "city": "Nice"}),
        (spec, {**args, "units": "F"}),
        (Spec(name=spec.name, version="2", cache_params=spec.cache_params), args),
        (Spec(name=spec.name + "x", cache_params=spec.cache_params), args),
    ]:
        calls = tool.calls
        outcome = await _tool_step(caches, changed_spec, tool, changed_args)
        assert not outcome.cache_hit and tool.calls == calls + 1, (changed_spec, changed_args)


async def test_tool_without_declared_params_keys_on_all_arguments(caches: Caches) -> None:
    spec = Spec(name=f"lookup-{uuid.uuid4().hex[:6]}")
    tool = Tool()
    await _tool_step(caches, spec, tool, {"city": "Lyon", "note": "a"})
    assert (await _tool_step(caches, spec, tool, {"city": "Lyon", "note": "a"})).cache_hit
    assert not (await _tool_step(caches, spec, tool, {"city": "Lyon", "note": "b"})).cache_hit


async def test_tool_ttl_is_per_tool_and_expires(caches: Caches, stack: Settings) -> None:
    default = Spec(name=f"rates-{uuid.uuid4().hex[:6]}")
    slow_changing = Spec(name=f"catalogue-{uuid.uuid4().hex[:6]}", cache_ttl_s=3600.0)
    short = Spec(name=f"prices-{uuid.uuid4().hex[:6]}", cache_ttl_s=0.4)
    args = {"city": "Lyon"}
    for spec in (default, slow_changing, short):
        await _tool_step(caches, spec, Tool(), args)
    ttl = caches.store.redis.pttl
    assert 0 < await ttl(caches.tools.key(default, args)) <= stack.tool_cache_ttl_s * 1000
    assert (stack.tool_cache_max_ttl_s - 5) * 1000 < await ttl(
        caches.tools.key(slow_changing, args)) <= stack.tool_cache_max_ttl_s * 1000
    tool = Tool()
    await _wait_expired(caches, caches.tools.key(short, args))
    assert not (await _tool_step(caches, short, tool, args)).cache_hit and tool.calls == 1


async def test_mutating_tools_are_never_cached(caches: Caches) -> None:
    spec = Spec(name=f"send-mail-{uuid.uuid4().hex[:6]}", mutating=True, cache_ttl_s=600.0)
    tool = Tool()
    args = {"city": "Lyon"}
    for _ in range(3):
        outcome = await _tool_step(caches, spec, tool, args)
        assert not outcome.cache_hit
    assert tool.calls == 3
    assert await caches.store.redis.keys(f"tc:{spec.name}:*") == []


async def test_embedding_cache_whitespace_and_batch(caches: Caches) -> None:
    text = f"Kafka keeps   offsets\n\tper consumer group. {uuid.uuid4().hex}"
    reindented = "  " + text.replace("   ", " ").replace("\n\t", "\n        ") + "\n"
    other = f"Redis holds the caches. {uuid.uuid4().hex}"
    with collecting() as first:
        [v1] = await caches.embeddings.embed([text])
    assert first.records()[0]["misses"] == 1 and first.layers["embedding"].spent_tokens > 0
    with collecting() as second:
        v2, v3 = await caches.embeddings.embed([reindented, other])
    stats = second.layers["embedding"]
    assert (stats.hits, stats.misses) == (1, 1)
    assert v2 == v1 and v3 != v1
    assert stats.saved_tokens > 0 and stats.saved_cost_usd > 0
    with collecting() as third:
        await caches.embeddings.embed([text, other, text.upper()])
    assert (third.layers["embedding"].hits, third.layers["embedding"].misses) == (2, 1)
    key = f"emb:{await caches.models.get('embedding')}:*"
    assert await caches.store.redis.keys(key), "vectors are stored under the model id"
    assert all([await caches.store.redis.pttl(k) == -1 for k in
                await caches.store.redis.keys(key)]), "embeddings have no TTL by default"


async def test_embedding_model_id_is_part_of_the_key(caches: Caches) -> None:
    from clawstream.processors.keys import embedding_cache_key

    assert embedding_cache_key("m1", "a  b") == embedding_cache_key("m1", " a b ")
    assert embedding_cache_key("m1", "a b") != embedding_cache_key("m2", "a b")
    assert embedding_cache_key("m1", "a b") != embedding_cache_key("m1", "a c")
