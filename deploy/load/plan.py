"""What a load run sends and when: phases of a profile, and a seeded plan of requests.

Open-loop: the send times are fixed before the run (seeded exponential gaps at each phase's
rate), so a slow stack meets the traffic it would meet in production instead of slowing the
client down. The same seed gives the same plan, so two runs differ only by the stack.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

PROFILES = ("burst", "plateau", "ramp", "seed")
EFFECT_AGENT = "fault-effect"
"""The agent whose mutating tool counts its effect per request (``counts.EFFECTS_KEY``)."""
FLAKY_AGENT = "fault-flaky"
HANG_AGENT = "fault-hang"
MODEL_AGENT = "fault-model"
MODEL_FAULT_MARK = "[load-5xx]"
"""Put in a request's text: the model fault rule (inference/faults.py) matches on it."""


@dataclass(frozen=True)
class Phase:
    name: str
    rate: float
    seconds: float


@dataclass(frozen=True)
class Faults:
    """Which faults a run injects. Rates are per request of the agent that can show them."""

    tool_error_rate: float = 0.0
    tool_latency_rate: float = 0.0
    tool_latency_s: float = 2.0
    model_error_rate: float = 0.0
    worker_kill_every_s: float | None = None
    broker_restart_at_s: float | None = None
    broker_down_s: float = 5.0
    redis_restart_at_s: float | None = None
    redis_down_s: float = 3.0

    def schedule(self, duration_s: float, workers: int) -> list[tuple[float, str]]:
        """(seconds from start, what) of the process faults: worker kills take turns."""
        events: list[tuple[float, str]] = []
        if self.worker_kill_every_s:
            n = 1
            while self.worker_kill_every_s * n < duration_s:
                events.append((self.worker_kill_every_s * n, f"worker-{(n - 1) % workers}"))
                n += 1
        if self.broker_restart_at_s is not None and self.broker_restart_at_s < duration_s:
            events.append((self.broker_restart_at_s, "kafka"))
        if self.redis_restart_at_s is not None and self.redis_restart_at_s < duration_s:
            events.append((self.redis_restart_at_s, "redis"))
        return sorted(events)


@dataclass(frozen=True)
class Planned:
    """One request of the plan: when (s from start), in which phase, what it asks."""

    at_s: float
    phase: str
    agent: str
    lane: str
    text: str
    conversation_id: str
    options: dict[str, str] = field(default_factory=dict)


def profile(name: str, rate: float, seconds: float) -> list[Phase]:
    """``rate`` is the average traffic (requests/s). ``burst``: 2x for ``seconds``;
    ``plateau``: 1x; ``ramp``: down from 2x to a third in four steps; ``seed``: the seed's
    test, a third of the time each: burst, plateau, ramp."""
    if name == "burst":
        return [Phase("burst", 2 * rate, seconds)]
    if name == "plateau":
        return [Phase("plateau", rate, seconds)]
    if name == "ramp":
        steps = 4
        return [Phase(f"ramp-{i + 1}", rate * (2 - (2 - 1 / 3) * i / (steps - 1)),
                      seconds / steps) for i in range(steps)]
    if name == "seed":
        third = seconds / 3
        return [Phase("burst", 2 * rate, third), Phase("plateau", rate, third),
                *profile("ramp", rate, third)]
    raise ValueError(f"unknown profile {name!r}; one of {', '.join(PROFILES)} or --phase")


def parse_phase(text: str) -> Phase:
    """``RATE:SECONDS`` or ``NAME=RATE:SECONDS`` (a custom phase)."""
    name, _, spec = text.rpartition("=")
    rate, _, seconds = spec.partition(":")
    try:
        phase = Phase(name or f"custom-{rate}/s", float(rate), float(seconds))
    except ValueError as exc:
        raise ValueError(f"phase {text!r}: expected RATE:SECONDS, e.g. 4:30") from exc
    if phase.rate <= 0 or phase.seconds <= 0:
        raise ValueError(f"phase {text!r}: rate and seconds must be positive")
    return phase


def parse_mix(text: str) -> dict[str, float]:
    """``a:2,b:1`` -> weights (a bare name weighs 1)."""
    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, weight = part.partition(":")
        mix[name] = float(weight or 1)
    if not mix or any(w <= 0 for w in mix.values()):
        raise ValueError(f"mix {text!r}: name[:weight],... with positive weights")
    return mix


def plan(phases: list[Phase], agents: dict[str, float], lanes: dict[str, float],
         faults: Faults, seed: int, run: str, limit: int | None = None) -> list[Planned]:
    """The requests of a run (conversations ``load-<run>-<i>``), seeded: Poisson arrivals
    per phase, agents and lanes drawn by weight, and tool and model faults decided per
    request (in its arguments or text)."""
    rng = random.Random(seed)
    out: list[Planned] = []
    start = 0.0
    for phase in phases:
        t = start + rng.expovariate(phase.rate)
        while t < start + phase.seconds and (limit is None or len(out) < limit):
            agent = rng.choices(list(agents), weights=list(agents.values()))[0]
            lane = rng.choices(list(lanes), weights=list(lanes.values()))[0]
            out.append(_request(rng, run, round(t, 4), phase.name, agent, lane, faults, len(out)))
            t += rng.expovariate(phase.rate)
        start += phase.seconds
    return out


def _request(rng: random.Random, run: str, at_s: float, phase: str, agent: str, lane: str,
             faults: Faults, i: int) -> Planned:
    conversation = f"load-{run}-{i}"
    text = f"Where are tool results cached? #{i}"
    args: dict[str, object] = {}
    if agent == FLAKY_AGENT:
        args = {"fail_attempts": int(rng.random() < faults.tool_error_rate), "output": "ok"}
    elif agent == HANG_AGENT:
        slow = rng.random() < faults.tool_latency_rate
        args = {"hang_attempts": int(slow), "hang_s": faults.tool_latency_s}
    elif agent == EFFECT_AGENT:
        args = {"counter": conversation}
    elif agent == MODEL_AGENT and rng.random() < faults.model_error_rate:
        text = f"{MODEL_FAULT_MARK} {text}"
    options = {"args0": json.dumps(args, sort_keys=True)} if args else {}
    return Planned(at_s, phase, agent, lane, text, conversation, options)


