"""A streamed model step's output, published while the model generates it.

When a request streams (its ``stream`` option, set by the gateway for a client that asked),
the dispatcher calls the model with a delta callback and publishes what arrives as
:class:`~clawstream.schemas.records.StepDelta` records on ``agent.deltas``, keyed by
conversation like the answers (one conversation's deltas stay in order). Each carries the
step attempt, so a reader follows one attempt and a retry never mixes its text into
another's. The last delta of an attempt carries the finish reason and the tool calls.

Deltas are transport, not record: a failed send is logged and dropped (the answer, which
the coordinator writes from the step result, has the whole text), and a prompt-cache hit
publishes none.
"""

from __future__ import annotations

import logging
import time

from clawstream.inference.client import GenerationResult
from clawstream.processors.emit import Emitter, now_ms
from clawstream.processors.records import Output
from clawstream.schemas.names import STEP_DELTA
from clawstream.schemas.records import FunctionCall, StepCommand, StepDelta
from clawstream.streams.topics import DELTAS

log = logging.getLogger(__name__)


class StepDeltas:
    """The deltas of one attempt of one model step."""

    def __init__(self, emitter: Emitter, cmd: StepCommand, flush_ms: float) -> None:
        self._emitter = emitter
        self._cmd = cmd
        self._flush_s = flush_ms / 1000.0
        self._seq = 0
        self._pending: list[str] = []
        self._sent_at = 0.0

    async def text(self, piece: str) -> None:
        """New text from the model: sent at once when it is the first, or when the last
        send is ``flush_ms`` old; else held for the next."""
        self._pending.append(piece)
        if self._seq == 0 or time.monotonic() - self._sent_at >= self._flush_s:
            await self._send(None, [])

    async def finish(self, result: GenerationResult) -> None:
        """The attempt's last delta: what is held, the finish reason and the tool calls."""
        calls: list[FunctionCall] = [{"id": c.id, "name": c.name, "arguments_json": c.arguments}
                                     for c in result.tool_calls]
        await self._send(result.finish_reason, calls)

    async def _send(self, finish_reason: str | None, calls: list[FunctionCall]) -> None:
        cmd = self._cmd
        record: StepDelta = {
            "request_id": cmd["request_id"], "conversation_id": cmd["conversation_id"],
            "step_id": cmd["step_id"], "step_index": cmd["step_index"],
            "attempt": cmd["attempt"], "seq": self._seq, "text": "".join(self._pending),
            "tool_calls": calls, "finish_reason": finish_reason, "at_ms": now_ms()}
        self._pending = []
        self._seq += 1
        self._sent_at = time.monotonic()
        try:
            await self._emitter.send(Output(DELTAS.name, cmd["conversation_id"], STEP_DELTA,
                                            record))
        except Exception:  # best effort: the answer carries the whole text
            log.warning("step %s: a delta was not sent", cmd["step_id"], exc_info=True)
