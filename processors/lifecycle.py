"""The worker process's life: it drains before it stops, and replaces itself when stalled.

Faust's own SIGTERM handling stops the consumer and cancels the agents at once: a step in
the middle of a model or tool call is thrown away and redone by the next owner of its
partition. This worker first stops fetching and lets in-flight steps finish and send
their results (up to ``drain_timeout_s``), then shuts down as usual. SIGKILL still loses
nothing: offsets of unfinished steps were never committed, so they are redelivered.

From its first start a watchdog thread looks for a stall (``processors/stall.py``): a
worker that holds partitions and no longer moves them is worse than a dead one, because
the group does not give its partitions to anybody else. Repeated warnings and errors are
logged once per interval with a count (``processors/logflood.py``).
"""

from __future__ import annotations

import asyncio
import logging
import signal

import faust

from clawstream.config import get_settings
from clawstream.processors import logflood
from clawstream.processors.restart import restart_in_place
from clawstream.processors.stall import StallWatchdog
from clawstream.streams.topics import REQUESTS_INTERACTIVE, RESULTS


class ClawstreamWorker(faust.Worker):
    _drain_task: asyncio.Future[None] | None = None
    _watchdog: StallWatchdog | None = None

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        """Faust has configured the root logger: repeated warnings and errors (a broker
        outage makes ~20 a second) go out once per interval, with a count."""
        super().on_setup_root_logger(logger, level)
        logflood.install(logger, get_settings().log_repeat_interval_s)

    async def on_first_start(self) -> None:
        await super().on_first_start()
        settings = get_settings()
        app = self.app
        recovery = app.tables.recovery  # type: ignore[attr-defined]
        self._watchdog = StallWatchdog(
            bootstrap=settings.bootstrap_servers, group=settings.app_id,
            topics=(REQUESTS_INTERACTIVE.name, RESULTS.name),
            timeout_s=settings.worker_stall_timeout_s,
            assignment=lambda: {(tp.topic, tp.partition) for tp in app.consumer.assignment()},
            # Faust's own record of acked offsets not yet committed (a TP is a tuple).
            acked=lambda tp: app.consumer._acked_index.get(tp, ()),  # type: ignore[attr-defined]
            recovery_marker=lambda: sorted(recovery.active_offsets.items()),
            loop=self.loop, restart=restart_in_place)
        self._watchdog.start()

    def _on_sigterm(self) -> None:
        if self._watchdog is not None:
            self._watchdog.stop()  # a draining worker moves nothing on purpose
        if self._drain_task is None:
            self._drain_task = asyncio.ensure_future(self._drain_then_stop(), loop=self.loop)

    async def _drain_then_stop(self) -> None:
        from clawstream.processors.workers import drain

        try:
            await drain(get_settings().drain_timeout_s)
        finally:
            self._schedule_shutdown(signal.SIGTERM)
