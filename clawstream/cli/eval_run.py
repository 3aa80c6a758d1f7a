"""Running a regression set through the real event flow, and its report.

Each scenario is a conversation of its own, sent as requests on the batch lane by a tenant
of its own (``settings.eval_tenant``), so an eval never competes with interactive traffic
and stays out of a canary's live figures; ``--version`` becomes the request option
``agent_version`` (that version runs, the conversation's routing is left alone) and a
``context_exchanges`` setting becomes the option of the same name (trimming measured, not
assumed). Scenarios run ``eval_concurrency`` at a time, the turns of one in order, each
awaiting its answer. A turn with a ``script`` registers it with the scripted model fixture
under the scenario's marker appended to the user's text (test stacks only).
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from clawstream.cli.eval_set import EvalSet, Scenario, Turn, cosine, failures, tokens_of
from clawstream.config import Settings
from clawstream.schemas.records import AgentAnswer

RATE_LIMIT_RETRIES = 5
_RETRY_AFTER = re.compile(r"retry after ([0-9.]+) s")


def retry_after(answer: AgentAnswer | None) -> float | None:
    """Seconds to wait when the entrance limits rejected the request (the eval tenant sent
    faster than its bucket): the runner sends the turn again instead of failing it."""
    if answer is None or answer["status"] != "rejected":
        return None
    found = _RETRY_AFTER.search(answer.get("reason") or "")
    return min(60.0, float(found.group(1))) if found else None


@dataclass
class TurnResult:
    user: str
    status: str
    text: str
    failures: list[str]
    tokens: int
    cost_usd: float
    latency_ms: float
    steps: int
    version: str
    similarity: float | None = None


@dataclass
class ScenarioResult:
    name: str
    passed: bool
    reason: str
    turns: list[TurnResult]

    @property
    def tokens(self) -> int:
        return sum(t.tokens for t in self.turns)

    @property
    def cost_usd(self) -> float:
        return sum(t.cost_usd for t in self.turns)

    @property
    def latency_ms(self) -> float:
        return sum(t.latency_ms for t in self.turns)


@dataclass
class EvalReport:
    agent: str
    version: str
    """The version asked for, else the versions that answered (the live one)."""
    set_path: str
    run_id: str
    started_at_ms: int
    duration_s: float
    context_exchanges: int | None
    scenarios: list[ScenarioResult] = field(default_factory=list)

    @property
    def passed(self) -> int:
        return sum(s.passed for s in self.scenarios)

    @property
    def pass_rate(self) -> float:
        return self.passed / len(self.scenarios) if self.scenarios else 0.0

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.scenarios)

    @property
    def cost_usd(self) -> float:
        return sum(s.cost_usd for s in self.scenarios)

    @property
    def p50_latency_ms(self) -> float:
        times = [t.latency_ms for s in self.scenarios for t in s.turns]
        return statistics.median(times) if times else 0.0

    @property
    def scenarios_per_minute(self) -> float:
        return len(self.scenarios) / self.duration_s * 60 if self.duration_s else 0.0

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body.update(passed=self.passed, pass_rate=self.pass_rate, tokens=self.tokens,
                    cost_usd=self.cost_usd, p50_latency_ms=self.p50_latency_ms,
                    scenarios_per_minute=self.scenarios_per_minute)
        return body

    def save(self, directory: Path) -> Path:
        """Stored as JSON (``settings.state_dir/evals`` by default): CI keeps it as an
        artefact, ``canary status`` shows the latest pass rate per version."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.agent}-{self.version}-{self.run_id}.json"
        path.write_text(json.dumps(self.to_json(), indent=2))
        return path


def latest_pass_rates(directory: Path, agent: str) -> dict[str, float]:
    """Version -> the pass rate of its latest stored eval (for ``canary status``)."""
    found: dict[str, tuple[int, float]] = {}
    for path in directory.glob(f"{agent}-*.json") if directory.exists() else ():
        try:
            body = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if body.get("agent") != agent or body.get("context_exchanges") is not None:
            continue
        at, version = int(body["started_at_ms"]), str(body["version"])
        if version not in found or found[version][0] < at:
            found[version] = (at, float(body["pass_rate"]))
    return {v: rate for v, (_, rate) in found.items()}


class Runner:
    """Runs one set against the stack that ``settings`` names."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def run(self, eval_set: EvalSet, agent: str, set_path: str, version: str | None = None,
            context_exchanges: int | None = None) -> EvalReport:
        from clawstream.streams.publisher import Publisher
        from clawstream.streams.subscriber import AnswerCollector
        from clawstream.streams.topics import ANSWERS

        run_id = uuid.uuid4().hex[:10]
        started = time.monotonic()
        started_at_ms = int(time.time() * 1000)
        with Publisher(self.settings.bootstrap_servers) as publisher, \
                AnswerCollector(self.settings.bootstrap_servers, ANSWERS.name) as collector, \
                ThreadPoolExecutor(self.settings.eval_concurrency) as pool:
            results = list(pool.map(
                lambda item: self._scenario(item[1], f"eval-{run_id}-{item[0]}", agent,
                                            version, context_exchanges, publisher,
                                            collector),
                enumerate(eval_set.scenarios)))
        versions = sorted({t.version for s in results for t in s.turns if t.version != "none"})
        return EvalReport(agent=agent, version=version or "+".join(versions) or "none",
                          set_path=set_path, run_id=run_id, started_at_ms=started_at_ms,
                          duration_s=time.monotonic() - started,
                          context_exchanges=context_exchanges, scenarios=results)

    def _scenario(self, scenario: Scenario, conversation: str, agent: str,
                  version: str | None, context_exchanges: int | None, publisher: Any,
                  collector: Any) -> ScenarioResult:
        from clawstream.streams.publisher import new_request, publish_request

        options = {"agent_version": version} if version else {}
        if context_exchanges:
            options["context_exchanges"] = str(context_exchanges)
        turns: list[TurnResult] = []
        marker = f"eval-script-{uuid.uuid4().hex}"
        for turn in scenario.turns:
            text = self._scripted(turn, marker) if turn.script else turn.user
            for _ in range(RATE_LIMIT_RETRIES + 1):
                request = new_request(agent=agent, conversation_id=conversation, text=text,
                                      tenant_id=self.settings.eval_tenant,
                                      user_id=conversation, lane="batch",
                                      options=dict(options))
                publish_request(publisher, request).result()  # acked before awaiting
                answer = collector.wait(request["idempotency_key"],
                                        self.settings.eval_answer_timeout_s)
                wait_s = retry_after(answer)
                if wait_s is None:
                    break
                time.sleep(wait_s)  # the eval tenant's entrance limit: not a verdict
            if answer is None:
                turns.append(TurnResult(turn.user, "none", "", [
                    f"no answer within {self.settings.eval_answer_timeout_s:.0f} s"],
                    0, 0.0, 0.0, 0, "none"))
                break
            turns.append(self._judge(turn, answer))
            if turns[-1].failures:
                break  # later turns build on this one: judged no further
        failed = [(i, t) for i, t in enumerate(turns) if t.failures]
        reason = ("; ".join(f"turn {i + 1}: {'; '.join(t.failures)}" for i, t in failed)
                  if failed else "all expectations met")
        return ScenarioResult(scenario.name, not failed and len(turns) == len(scenario.turns),
                              reason, turns)

    def _scripted(self, turn: Turn, marker: str) -> str:
        """Register the turn's script under the scenario's marker (replacing the previous
        turn's: the fixture answers the first marker it finds in the messages, and the
        earlier turns' texts are in the context too)."""
        response = httpx.post(f"{self.settings.serve_url}/script",
                              json={"marker": marker, "turns": turn.script}, timeout=10)
        response.raise_for_status()
        return f"{turn.user} {marker}"

    def _judge(self, turn: Turn, answer: AgentAnswer) -> TurnResult:
        similarity = None
        if turn.expect.similar_to is not None and answer["text"]:
            similarity = self._similarity(answer["text"], turn.expect.similar_to.reference)
        return TurnResult(
            user=turn.user, status=answer["status"], text=answer["text"],
            failures=failures(turn.expect, answer, similarity), tokens=tokens_of(answer),
            cost_usd=answer["usage"]["cost_usd"],
            latency_ms=float(answer["answered_at_ms"] - answer["created_at_ms"]),
            steps=len(answer["timeline"]), version=answer["agent_version"],
            similarity=similarity)

    def _similarity(self, text: str, reference: str) -> float:
        """Cosine of the two texts' MiniLM embeddings (the inference app's /embed)."""
        from clawstream.inference.client import InferenceClient

        async def embed() -> list[list[float]]:
            async with InferenceClient(self.settings.serve_url) as client:
                return await client.embed([text, reference])

        first, second = asyncio.run(embed())
        return cosine(first, second)
