"""A Faust worker that drains before it stops.

Faust's own SIGTERM handling stops the consumer and cancels the agents at once: a step in
the middle of a model or tool call is thrown away and redone by the next owner of its
partition. This worker first stops fetching and lets in-flight steps finish and send
their results (up to ``drain_timeout_s``), then shuts down as usual. SIGKILL still loses
nothing: offsets of unfinished steps were never committed, so they are redelivered.
"""

from __future__ import annotations

import asyncio
import signal

import faust

from clawstream.settings import get_settings


class DrainingWorker(faust.Worker):
    _drain_task: asyncio.Future[None] | None = None

    def _on_sigterm(self) -> None:
        if self._drain_task is None:
            self._drain_task = asyncio.ensure_future(self._drain_then_stop(), loop=self.loop)

    async def _drain_then_stop(self) -> None:
        from processors.workers import drain

        try:
            await drain(get_settings().drain_timeout_s)
        finally:
            self._schedule_shutdown(signal.SIGTERM)
