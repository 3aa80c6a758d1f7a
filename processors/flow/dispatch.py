"""The dispatch loop shared by the inference dispatcher and the tool executor.

A Faust agent only *fetches*: it decodes a step command and hands it to
:meth:`Dispatcher.submit`. One admission loop per process then picks the next step with
the :class:`~processors.flow.scheduler.LaneScheduler` (interactive first, tenants in turn),
asks the :class:`Admission` policy (the tokens/s bucket of the step's model pool, or
nothing for tools), and runs it with bounded concurrency.

Backpressure, not buffering: when a lane's buffer is full, or a downstream answered
"overloaded" (Serve's 503 + Retry-After, a 429, a full queue), the loop pauses the Kafka
partitions that feed it (Faust's ``consumer.pause_partitions``) and resumes them when
the buffer drains or the Retry-After passes; an overloaded step goes back to the head of its
queue, refunded, instead of becoming another retry. Offsets are acked per step when its
result is sent (``stream.noack()``), so a crash re-delivers what was buffered or running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from processors.flow.scheduler import LaneScheduler, Pending

log = logging.getLogger(__name__)

IDLE_TICK_S = 0.1


class Overloaded(Exception):
    """A downstream shed load: stop fetching for ``retry_after_s``, then try the step again."""

    def __init__(self, message: str, retry_after_s: float | None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s if retry_after_s is not None else 1.0


class Admission(Protocol):
    async def admit(self, item: Pending) -> float:
        """0 when ``item`` may run now (and is charged), else seconds to wait."""
        ...

    async def release(self, item: Pending, result: dict[str, Any] | None) -> None:
        """After the run: reconcile with the result's usage, or refund (``None``: not run)."""
        ...


class Unlimited:
    """No admission limit (tools): only lanes, fairness and backpressure apply."""

    async def admit(self, item: Pending) -> float:
        return 0.0

    async def release(self, item: Pending, result: dict[str, Any] | None) -> None:
        return None


class PartitionControl(Protocol):
    def assignment(self) -> Iterable[Any]: ...
    def pause_partitions(self, tps: Iterable[Any]) -> None: ...
    def resume_partitions(self, tps: Iterable[Any]) -> None: ...


@dataclass(frozen=True)
class PauseRule:
    """Pause ``topics`` while ``when()`` holds (or while a downstream is overloaded)."""

    topics: frozenset[str]
    when: Callable[[], bool]


Run = Callable[[Pending], Awaitable[Any]]
"""Runs one step; returns the output to send; raises :class:`Overloaded` to back off."""


class Dispatcher:
    def __init__(self, name: str, scheduler: LaneScheduler, admission: Admission, run: Run,
                 finish: Callable[[Pending, Any], Awaitable[None]],
                 # finish(item, output) sends and acks; output may be the step's exception
                 consumer: Callable[[], PartitionControl], concurrency: int) -> None:
        self.name = name
        self.scheduler = scheduler
        self.pause_rules: list[PauseRule] = []
        self._admission = admission
        self._run = run
        self._finish = finish
        self._consumer = consumer
        self._concurrency = concurrency
        self._inflight = 0
        self._overloaded_until = 0.0
        self._paused: set[frozenset[str]] = set()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.pause_count = 0

    def submit(self, item: Pending) -> None:
        item.fetched_at = time.monotonic()
        self.scheduler.push(item)
        self._apply_pauses()
        self._wake.set()

    def hold(self, seconds: float) -> None:
        """A downstream answered "overloaded": fetch and admit nothing for ``seconds``."""
        self._overloaded_until = max(self._overloaded_until, time.monotonic() + seconds)
        self._apply_pauses()

    @property
    def overloaded(self) -> bool:
        return time.monotonic() < self._overloaded_until

    def _apply_pauses(self) -> None:
        try:
            consumer = self._consumer()
            assigned = list(consumer.assignment())
        except Exception:  # not started yet / rebalancing: nothing to pause
            return
        for rule in self.pause_rules:
            tps = [tp for tp in assigned if tp.topic in rule.topics]
            if self.overloaded or rule.when():
                # Re-applied every tick: a rebalance hands out fresh, unpaused partitions.
                consumer.pause_partitions(tps)
                if rule.topics not in self._paused:
                    self._paused.add(rule.topics)
                    self.pause_count += 1
                    log.info("%s: paused %s", self.name, sorted(rule.topics))
            elif rule.topics in self._paused:
                consumer.resume_partitions(tps)
                self._paused.discard(rule.topics)
                log.info("%s: resumed %s", self.name, sorted(rule.topics))

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=max(0.001, seconds))

    async def run_forever(self) -> None:
        while True:
            self._apply_pauses()
            if self.overloaded:
                await self._sleep(min(IDLE_TICK_S, self._overloaded_until - time.monotonic()))
                continue
            if self._inflight >= self._concurrency or not len(self.scheduler):
                await self._sleep(IDLE_TICK_S)
                continue
            item = self.scheduler.pop()
            assert item is not None
            try:
                wait = await self._admission.admit(item)
            except Exception:
                log.exception("%s: admission failed; retrying", self.name)
                wait = 1.0
            if wait > 0:
                # Back to the head of its queue; a higher-priority arrival may go first.
                self.scheduler.push(item, front=True)
                await self._sleep(min(wait, IDLE_TICK_S))
                continue
            self._inflight += 1
            task = asyncio.create_task(self._execute(item))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _execute(self, item: Pending) -> None:
        try:
            output = await self._run(item)
        except Overloaded as exc:
            await self._admission.release(item, None)
            self.scheduler.push(item, front=True)
            self._overloaded_until = time.monotonic() + exc.retry_after_s
            log.warning("%s: downstream overloaded (%s); pausing %.1f s", self.name, exc,
                        exc.retry_after_s)
            return
        except Exception as exc:  # a poison step: ``finish`` dead-letters it and acks
            await self._admission.release(item, None)
            await self._finish(item, exc)
            return
        finally:
            self._inflight -= 1
            self._wake.set()
        await self._admission.release(item, getattr(output, "record", None))
        await self._finish(item, output)
