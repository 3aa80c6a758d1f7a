"""Caches in the real flow: Kafka, the Faust worker, Redis, Ray Serve with the real model.

A question asked again in another conversation is answered from the prompt-output and
tool-result caches, with the savings on the answer; a request can opt out; stopping the
Redis server mid-run degrades every cache to a miss, requests are still answered, and a
``cache_unavailable`` event says so. ``clawstream cost`` reads it all back.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from typer.testing import CliRunner

from clawstream.cli import app as cli
from clawstream.config import Settings
from clawstream.deploy.local import redis as redis_local
from clawstream.deploy.local import worker as worker_proc
from clawstream.processors.caching import collecting
from clawstream.processors.caching.store import CacheStore
from tests.integration.flow import ask, events_of, has_event

pytestmark = pytest.mark.integration


def _ask(settings: Settings, text: str, *, agent: str = "researcher",
         tenant: str = "default", options: dict[str, str] | None = None) -> dict[str, Any]:
    """Each question in a conversation of its own: repeats share the whole context."""
    answer = ask(settings, agent=agent, conversation_id=f"cache-{uuid.uuid4().hex[:10]}",
                 text=text, tenant_id=tenant, options=options)
    assert answer["status"] == "ok", answer["reason"]
    return answer


def _hits(answer: dict[str, Any]) -> dict[str, bool]:
    return {e["step_type"]: e["cache_hit"] for e in answer["timeline"]}


def _layers(answer: dict[str, Any]) -> dict[str, tuple[int, int]]:
    return {r["layer"]: (r["hits"], r["misses"]) for r in answer["cache"]}


def test_repeated_question_is_answered_from_the_caches(worker: Settings) -> None:
    question = f"Where does clawstream keep tool results? ({uuid.uuid4().hex[:6]})"
    # The worker's retriever indexes the corpus on its first run (in the step that runs
    # it); after that a run embeds its query alone.
    _ask(worker, f"Index the corpus, please ({uuid.uuid4().hex[:6]})")
    first = _ask(worker, question)
    second = _ask(worker, question)
    assert _hits(first) == {"tool": False, "model": False}
    assert _hits(second) == {"tool": True, "model": True}
    assert second["text"] == first["text"]
    assert first["usage"]["cost_usd"] > 0 and first["usage"]["completion_tokens"] > 0
    assert second["usage"]["cost_usd"] == 0 and second["usage"]["completion_tokens"] == 0
    assert second["usage"]["saved_tokens"] >= first["usage"]["completion_tokens"]
    assert second["usage"]["saved_cost_usd"] > 0
    assert _layers(first)["prompt"] == (0, 1) and _layers(first)["tool"] == (0, 1)
    assert _layers(second)["prompt"] == (1, 0) and _layers(second)["tool"] == (1, 0)
    assert _layers(first)["embedding"] == (0, 1)  # the query alone, not the corpus again
    assert "embedding" not in _layers(second)  # the tool did not run
    # The same question re-indented: a new tool key and prompt, but no text is re-embedded.
    reindented = _ask(worker, "  " + question.replace(" ", "\n    ", 2) + "\n")
    assert _hits(reindented) == {"tool": False, "model": False}
    assert _layers(reindented)["embedding"] == (1, 0)


def test_a_request_can_opt_out_of_the_caches(worker: Settings) -> None:
    question = f"What is the interactive lane for? ({uuid.uuid4().hex[:6]})"
    _ask(worker, question)
    opted_out = _ask(worker, question, options={"no-cache": "true"})
    assert _hits(opted_out) == {"tool": False, "model": False}
    assert opted_out["usage"]["completion_tokens"] > 0
    assert "prompt" not in _layers(opted_out) and "tool" not in _layers(opted_out)
    assert _hits(_ask(worker, question, options={"max_cache_age_s": "600"})) == {
        "tool": True, "model": True}


def _errors(op: str) -> float:
    labels = {"layer": "prompt", "op": op}
    return REGISTRY.get_sample_value("clawstream_cache_errors_total", labels) or 0.0


async def _probe(settings: Settings) -> tuple[Any, list[str]]:
    """One read and one write through the cache store, as the workers do."""
    store = CacheStore(settings.redis_url, settings.cache_timeout_s)
    with collecting() as report:
        value = await store.get("prompt", "pc:probe")
        await store.put("prompt", "pc:probe", {"probe": True}, 10)
    await store.aclose()
    return value, [f"{f.layer}/{f.op}" for f in report.faults]


def test_redis_stopped_mid_run_degrades_to_misses(worker: Settings) -> None:
    question = f"What does Redis hold? ({uuid.uuid4().hex[:6]})"
    _ask(worker, question, agent="chat")
    assert redis_local.stop(worker) and not redis_local.is_ready(worker)
    try:
        gets, sets = _errors("get"), _errors("set")
        assert asyncio.run(_probe(worker)) == (None, ["prompt/get", "prompt/set"])
        assert (_errors("get"), _errors("set")) == (gets + 1, sets + 1)
        answer = _ask(worker, question, agent="chat")
        assert _hits(answer) == {"model": False}, "nothing can hit with Redis down"
        assert answer["usage"]["completion_tokens"] > 0
        events = [e for e in events_of(worker, answer["conversation_id"],
                                       until=has_event("cache_unavailable", layer="prompt"))
                  if e["event_type"] == "cache_unavailable"]
        assert events[0]["detail"]["degraded_to"] == "miss"
        assert "Error" in events[0]["detail"]["error"]
        researcher = _ask(worker, question)  # tool + embeddings without Redis
        assert _hits(researcher) == {"tool": False, "model": False}
        # the worker's own counter, as Prometheus scrapes it
        scraped = httpx.get(f"http://127.0.0.1:{worker_proc.web_port(worker, 0)}/metrics")
        errors = [line for line in scraped.text.splitlines() if line.startswith(
            'clawstream_cache_errors_total{layer="embedding",op="get"}')]
        assert errors and float(errors[0].split()[-1]) >= 1, scraped.text[-3000:]
        # rate limits sharing that Redis let the requests through rather than stop them
        assert 'clawstream_redis_fail_open_total{check="entrance"}' in scraped.text
    finally:
        redis_local.start(worker)
    # Redis back: the caches work again without a worker restart
    _ask(worker, question + " again", agent="chat")
    assert _hits(_ask(worker, question + " again", agent="chat")) == {"model": True}


def test_cost_command_reports_spend_savings_and_hit_rates(worker: Settings) -> None:
    tenant = f"tenant-{uuid.uuid4().hex[:6]}"
    question = f"How are retries spaced? ({uuid.uuid4().hex[:6]})"
    for _ in range(2):
        _ask(worker, question, tenant=tenant)
    result = CliRunner().invoke(cli, ["cost", "--tenant", tenant, "--since", "1h",
                                      "--idle", "3"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "2 interactions (ok 2)" in result.output
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:]]
            for line in result.output.splitlines() if line.count("│") > 4}
    assert rows["prompt"][:3] == ["1", "1", "50%"]
    assert rows["tool"][:3] == ["1", "1", "50%"]
    assert tenant in rows
    other = CliRunner().invoke(cli, ["cost", "--tenant", "nobody-" + tenant, "--idle", "2"])
    assert "0 interactions" in other.output
