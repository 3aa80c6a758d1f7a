"""Running a plan against a stack: an open-loop sender, the scheduled faults, samples of
progress (answers seen, consumer lag) for the live view and the report, then everything
read back from the topics."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from clawstream.config import Settings
from clawstream.deploy.load import counts
from clawstream.deploy.load.counts import Record
from clawstream.deploy.load.faults import inject, model_errors
from clawstream.deploy.load.plan import EFFECT_AGENT, MODEL_FAULT_MARK, Faults, Planned


@dataclass
class Sample:
    """The run at one moment (seconds from start)."""

    at_s: float
    sent: int
    answered: int
    lag: int | None


@dataclass
class Outcome:
    """What a run sent and what came back, read from the topics and Redis."""

    started_ms: int
    sent: list[Record]
    phase_of: dict[str, str]
    unacked: int
    answers: dict[str, list[Record]]
    effects: list[int]
    letters: list[Record]
    samples: list[Sample]
    faults_done: list[tuple[float, str]]
    late_sends: int = 0
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class Live:
    """What the live view shows; written by the run's threads, read by ``progress``."""

    planned: int
    sent: int = 0
    answered: int = 0
    lag: int | None = None
    phase: str = ""
    elapsed_s: float = 0.0
    notes: list[str] = field(default_factory=list)


def consumer_lag(settings: Settings) -> int | None:
    """Records the workers' group has not committed yet on the request topics; None if the
    broker does not answer."""
    from confluent_kafka import TopicPartition

    from clawstream.streams.subscriber import consumer
    from clawstream.streams.topics import LANE_TOPICS

    reader = consumer(settings.bootstrap_servers, settings.app_id,
                      **{"enable.auto.commit": False})
    try:
        parts = [TopicPartition(t.name, p) for t in LANE_TOPICS.values()
                 for p in reader.list_topics(t.name, timeout=2).topics[t.name].partitions]
        committed = reader.committed(parts, timeout=2)
        lag = 0
        for tp in committed:
            _low, high = reader.get_watermark_offsets(tp, timeout=2)
            lag += max(0, high - max(tp.offset, 0))
        return lag
    except Exception:
        return None
    finally:
        reader.close()


def execute(settings: Settings, planned: list[Planned], faults: Faults, *, workers: int,
            progress: Callable[[Live], None] | None = None, sample_every_s: float = 1.0
            ) -> Outcome:
    """Send ``planned`` on time (open loop), inject ``faults``, sample progress, then wait
    for every answer (up to the last deadline) and count."""
    from clawstream.streams.publisher import (
        Delivery,
        Publisher,
        PublishError,
        new_request,
        publish_request,
    )
    from clawstream.streams.subscriber import TopicTail
    from clawstream.streams.topics import ANSWERS

    duration_s = max((p.at_s for p in planned), default=0.0)
    model_errors(settings, sum(MODEL_FAULT_MARK in p.text for p in planned))
    live = Live(planned=len(planned))
    prefix = planned[0].conversation_id.rsplit("-", 1)[0].encode() if planned else b"-"
    seen: set[bytes] = set()
    tail = TopicTail(settings.bootstrap_servers, [ANSWERS.name],
                     lambda _t, key, _v: seen.add(key) if key and key.startswith(prefix)
                     else None)
    tail.start()
    sent: list[Record] = []
    phase_of: dict[str, str] = {}
    deliveries: list[Delivery] = []
    late = [0]
    faults_done: list[tuple[float, str]] = []
    t0 = time.monotonic()
    started_ms = int(time.time() * 1000)

    def note(message: str) -> None:
        live.notes.append(f"{time.monotonic() - t0:6.1f}s {message}")

    def send_all() -> None:
        publisher = Publisher(settings.bootstrap_servers)
        for i, p in enumerate(planned):
            wait = t0 + p.at_s - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            elif wait < -0.5:
                late[0] += 1  # the client fell behind its schedule (open loop: send now)
            request = new_request(agent=p.agent, conversation_id=p.conversation_id,
                                  text=p.text, lane=p.lane, options=p.options,
                                  tenant_id="load", user_id=f"user-{i % 50}")
            deliveries.append(publish_request(publisher, request))
            sent.append(dict(request))
            phase_of[request["request_id"]] = p.phase
            live.sent, live.phase = len(sent), p.phase
        with contextlib.suppress(PublishError):  # counted per message below
            publisher.close(120.0)

    def fault_all() -> None:
        for at, what in faults.schedule(duration_s, workers):
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            down = faults.broker_down_s if what == "kafka" else faults.redis_down_s
            try:
                inject(settings, what, down, note)
                faults_done.append((at, what))
            except Exception as exc:  # a fault that failed to inject is reported, not fatal
                note(f"[red]fault {what} failed[/]: {exc}")

    sender = threading.Thread(target=send_all, name="load-sender")
    faulter = threading.Thread(target=fault_all, name="load-faults")
    sender.start()
    faulter.start()
    samples: list[Sample] = []
    try:
        while sender.is_alive() or faulter.is_alive() or len(seen) < len(sent):
            live.elapsed_s = time.monotonic() - t0
            live.answered = len(seen)
            live.lag = consumer_lag(settings)
            samples.append(Sample(live.elapsed_s, live.sent, live.answered, live.lag))
            if progress is not None:
                progress(live)
            if not sender.is_alive() and live.elapsed_s > duration_s + _patience(sent):
                break
            time.sleep(sample_every_s)
    finally:
        sender.join()
        faulter.join()
        tail.stop()
    answers = counts.collect_answers(settings, sent)
    effects = counts.count_effects(settings, [q["conversation_id"] for q in sent
                                              if q["agent"] == EFFECT_AGENT])
    letters = counts.dead_letters(settings, {q["request_id"] for q in sent})
    unacked = sum(not d.done() or d.exception() is not None for d in deliveries)
    out = Outcome(started_ms, sent, phase_of, unacked, answers, effects, letters, samples,
                  faults_done, late[0])
    out.counts = counts.integrity(sent, answers, effects)
    return out


def _patience(sent: list[Record]) -> float:
    """How long after the last send answers may still come: up to the last deadline."""
    if not sent:
        return 0.0
    return max(0.0, max(q["deadline_ms"] - q["created_at_ms"] for q in sent) / 1000) + 15


def run_id() -> str:
    return uuid.uuid4().hex[:6]
