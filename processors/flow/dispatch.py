"""The dispatch loop shared by the inference dispatcher and the tool executor.

A Faust agent only *fetches*: it decodes a step command and hands it to
:meth:`Dispatcher.submit`. One admission loop per process then picks the next step with
the :class:`~processors.flow.scheduler.LaneScheduler` (interactive first, tenants in turn),
asks the :class:`Admission` policy (the tokens/s bucket of the step's model pool, or
nothing for tools), and runs it with bounded concurrency, of which the batch lane may
never take the last slots (``reserved``): an interactive step never waits for a batch call
to finish.

Backpressure, not buffering: ``submit`` waits while its lane's buffer is full, so the agent
stops taking from its stream; Faust's own flow control then stops fetching the topic's
partitions once its stream buffer (``worker_stream_buffer``) is full, and resumes when it
drains. Each lane has its own topic and agent, so a full batch lane never blocks the
interactive one. When a downstream answers "overloaded" (Serve's 503 + Retry-After, a 429,
a full queue), the loop admits nothing until it clears: buffers fill, fetching stops, and
the waiting steps go out when the downstream recovers instead of piling up as retries.

Why not ``consumer.pause_partitions``: Faust's pause only filters what its fetcher hands
over, and records already fetched for a partition paused in between are dropped without a
seek back. The committed offset then stalls and the partition looks stuck (measured: a
batch flood lost two thirds of its steps until their deadlines).

Offsets are acked per step when its result is sent (``stream.noack()``), so a crash
re-delivers what was buffered or running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Protocol

from clawstream import metrics
from clawstream.processors.flow.scheduler import LANES, LaneScheduler, Pending
from clawstream.schemas.records import StepResult

log = logging.getLogger(__name__)

IDLE_TICK_S = 0.1


class Admission(Protocol):
    async def admit(self, item: Pending) -> float:
        """0 when ``item`` may run now (and is charged), else seconds to wait."""
        ...

    async def release(self, item: Pending, result: StepResult | None) -> None:
        """After the run: reconcile with the result's usage, or refund (``None``: not run)."""
        ...


class Unlimited:
    """No admission limit (tools): only lanes, fairness and backpressure apply."""

    async def admit(self, item: Pending) -> float:
        return 0.0

    async def release(self, item: Pending, result: StepResult | None) -> None:
        return None


Run = Callable[[Pending], Awaitable[Any]]
"""Runs one step; returns the output to send (an overload is reported in it, and the
runner calls :meth:`Dispatcher.hold`)."""


class Dispatcher:
    def __init__(self, name: str, scheduler: LaneScheduler, admission: Admission, run: Run,
                 finish: Callable[[Pending, Any], Awaitable[None]],
                 # finish(item, output) sends and acks; output may be the step's exception
                 concurrency: int, reserved: int = 0) -> None:
        self.name = name
        self.scheduler = scheduler
        self._admission = admission
        self._run = run
        self._finish = finish
        self._concurrency = concurrency
        self._batch_slots = max(1, concurrency - reserved)
        self._inflight = {"interactive": 0, "batch": 0}
        self._overloaded_until = 0.0
        self._wake = asyncio.Event()
        self._room = asyncio.Condition()
        self._tasks: set[asyncio.Task[None]] = set()
        # Read at scrape time: the dispatch loop pays nothing for them.
        metrics.IN_FLIGHT.labels(name).set_function(lambda: self.running)
        metrics.HELD.labels(name).set_function(lambda: float(self.overloaded))
        for lane in LANES:
            metrics.BUFFERED.labels(name, lane).set_function(partial(scheduler.count, lane))

    async def submit(self, item: Pending) -> None:
        """Queue a fetched step; wait first while its lane is full (that is the backpressure
        that makes Faust stop fetching)."""
        async with self._room:
            await self._room.wait_for(lambda: not self.scheduler.full(item.lane))
        self.scheduler.push(item)
        self._wake.set()

    def hold(self, seconds: float) -> None:
        """A downstream answered "overloaded" (or we drain): admit nothing for ``seconds``."""
        if not self.overloaded:
            log.warning("%s: holding admissions for %.1f s", self.name, seconds)
        self._overloaded_until = max(self._overloaded_until, time.monotonic() + seconds)

    @property
    def overloaded(self) -> bool:
        return time.monotonic() < self._overloaded_until

    @property
    def running(self) -> int:
        return sum(self._inflight.values())

    def _may_start(self, item: Pending) -> bool:
        if self.running >= self._concurrency:
            return False
        return item.lane != "batch" or self._inflight["batch"] < self._batch_slots

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=max(0.001, seconds))

    async def _made_room(self) -> None:
        async with self._room:
            self._room.notify_all()

    async def run_forever(self) -> None:
        while True:
            if self.overloaded:
                await self._sleep(min(IDLE_TICK_S, self._overloaded_until - time.monotonic()))
                continue
            item = self.scheduler.peek()
            if item is None or not self._may_start(item):
                await self._sleep(IDLE_TICK_S)
                continue
            item = self.scheduler.pop()
            assert item is not None
            await self._made_room()
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
            self._inflight[item.lane if item.lane in self._inflight else "batch"] += 1
            task = asyncio.create_task(self._execute(item))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _execute(self, item: Pending) -> None:
        try:
            output = await self._run(item)
        except Exception as exc:  # a poison step: ``finish`` dead-letters it and acks
            await self._admission.release(item, None)
            await self._finish(item, exc)
            return
        finally:
            self._inflight[item.lane if item.lane in self._inflight else "batch"] -= 1
            self._wake.set()
        await self._admission.release(item, getattr(output, "result", None))
        await self._finish(item, output)
