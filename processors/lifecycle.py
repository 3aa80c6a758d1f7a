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

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import faust

from clawstream.config import Settings
from clawstream.processors import faust_fence, logflood
from clawstream.processors.restart import restart_in_place
from clawstream.processors.stall import StallWatchdog
from clawstream.streams.topics import REQUESTS_INTERACTIVE, RESULTS


class ClawstreamWorker(faust_fence.DrainingWorker):
    _watchdog: StallWatchdog | None = None
    stopping_on_sigterm = False
    """A SIGTERM began a clean stop (drain, commit, flush); ``main`` marks the local
    store clean when the process then exits with success."""

    def __init__(self, app: faust.App, *, settings: Settings,
                 drain: Callable[[], Awaitable[object]], **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.settings = settings
        self.drain = drain

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        """Faust has configured the root logger: repeated warnings and errors (a broker
        outage makes ~80 a second) go out once per interval, with a count."""
        super().on_setup_root_logger(logger, level)
        logflood.install(logger, self.settings.log_repeat_interval_s)

    async def on_first_start(self) -> None:
        await super().on_first_start()
        app = self.app
        faust_fence.check_app(app)
        self._watchdog = StallWatchdog(
            bootstrap=self.settings.bootstrap_servers, group=app.conf.id,
            topics=(REQUESTS_INTERACTIVE.name, RESULTS.name),
            timeout_s=self.settings.worker_stall_timeout_s,
            assignment=lambda: {(tp.topic, tp.partition) for tp in app.consumer.assignment()},
            acked=lambda tp: faust_fence.acked_offsets(app, tp),
            recovery_marker=lambda: faust_fence.recovery_marker(app),
            loop=self.loop, restart=restart_in_place)
        self._watchdog.start()

    def on_sigterm_received(self) -> None:
        self.stopping_on_sigterm = True
        if self._watchdog is not None:
            self._watchdog.stop()  # a draining worker moves nothing on purpose
