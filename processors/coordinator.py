"""The per-conversation coordinator: the only writer of a conversation's state.

Besides requests and step results it consumes wake-ups. A sweep (a Faust timer on every
worker) looks at the conversations of the partitions this worker owns and, for each one
with a retry, step budget or deadline due, sends a wake-up to the coordinator's own topic
keyed by the conversation. Faust tables may only be changed from stream iteration, and a
wake-up on the conversation's partition is handled in order with its other events, so the
rules stay single-writer and replayable. Due times live in the table (recovered on
rebalance); the in-memory index only saves the sweep from reading RocksDB every tick.
"""

from __future__ import annotations

import logging
from typing import Any

from clawstream.settings import get_settings
from processors.app import WORKER_NAME, app, conversations, coordinator_topic, request_dedup
from processors.conversation import Decision, next_due_ms, on_request, on_result, on_wakeup
from processors.emit import dead_letter, now_ms, send
from processors.flow import coordination
from processors.keys import dedup_key
from processors.policy import Policy
from processors.records import Output
from schemas import DecodeError, decode
from schemas.names import AGENT_ANSWER, AGENT_REQUEST, STEP_RESULT, WAKEUP
from streams.topics import RESULTS

log = logging.getLogger(__name__)
settings = get_settings()
policy = Policy.from_settings(settings)

FULL_SCAN_EVERY = 20
"""Sweeps between two rebuilds of the index from the table (partitions move on rebalance)."""
RESEND_AFTER_MS = 2000
"""A wake-up that changed nothing (or got lost) is sent again after this long."""

_due: dict[str, int] = {}
_woken: dict[str, tuple[int, int]] = {}  # conversation -> (due time, when its wake-up went)
_sweeps = 0


@app.agent(coordinator_topic)
async def coordinate(stream):  # type: ignore[no-untyped-def]
    async for event in stream.events():
        try:
            name, record = decode(event.value)
        except DecodeError as exc:
            log.warning("dead-lettering undecodable message: %s", exc)
            await dead_letter(event, str(exc), "DecodeError")
            continue
        try:
            await _handle(event, name, record)
        except Exception as exc:
            # A poison message must not stop every other conversation on this worker.
            log.exception("dead-lettering %s that could not be processed", name)
            await dead_letter(event, f"processing failed: {exc!r}", type(exc).__name__, record)


async def _handle(event: Any, name: str, record: dict[str, Any]) -> None:
    conversation_id = record["conversation_id"]
    conv = conversations.get(conversation_id)
    if name == AGENT_REQUEST:
        key = dedup_key(record["tenant_id"], conversation_id, record["idempotency_key"])
        if request_dedup.get(key) is None:
            rejection = await coordination.gate(record, conv, settings)
            if rejection is not None:  # not in dedup: the client may retry with its key
                for output in coordination.rejection_outputs(record, rejection):
                    await send(output)
                return
        decision = on_request(conv, request_dedup.get(key), record, now_ms(), policy)
        request_dedup[key] = decision.dedup
    elif name == STEP_RESULT:
        coordination.count_result(conv, record)
        decision = on_result(conv, record, now_ms(), policy)
    elif name == WAKEUP:
        decision = on_wakeup(conv, now_ms(), policy)
    else:
        await dead_letter(event, f"unexpected {name} on {event.message.topic}",
                          "UnexpectedSchema", record)
        return
    await _apply(conversation_id, await coordination.apply(decision, policy, settings))


async def _apply(conversation_id: str, decision: Decision) -> None:
    if decision.conversation is not None:  # a stray wake-up creates no conversation
        conversations[conversation_id] = decision.conversation
    _track(conversation_id, decision.conversation)
    for output in decision.outputs:
        if output.schema == AGENT_ANSWER:
            _mark_answered(output)
        await send(output)


def _mark_answered(output: Output) -> None:
    """Whatever path answered a request (result, wake-up, rejection), its dedup entry says
    so and with which status: only a failed request may be redriven."""
    a = output.record
    key = dedup_key(a["tenant_id"], a["conversation_id"], a["idempotency_key"])
    entry = request_dedup.get(key) or {"request_id": a["request_id"], "redriven": []}
    request_dedup[key] = {**entry, "status": "answered", "answer_status": a["status"]}


def _track(conversation_id: str, conv: dict[str, Any] | None) -> None:
    due = next_due_ms(conv, policy)
    if due is None:
        _due.pop(conversation_id, None)
        _woken.pop(conversation_id, None)
    else:
        _due[conversation_id] = due


@app.timer(interval=settings.sweep_interval_s)
async def sweep() -> None:
    global _sweeps
    _sweeps += 1
    if _sweeps % FULL_SCAN_EVERY == 1:
        _due.clear()
        for conversation_id, conv in conversations.items():
            _track(conversation_id, conv)
    now = now_ms()
    for conversation_id, due in list(_due.items()):
        woken = _woken.get(conversation_id)
        if due > now or (woken and woken[0] == due and now - woken[1] < RESEND_AFTER_MS):
            continue
        _woken[conversation_id] = (due, now)
        wakeup = {"conversation_id": conversation_id, "due_ms": due, "sent_at_ms": now,
                  "worker": WORKER_NAME}
        await send(Output(RESULTS.name, conversation_id, WAKEUP, wakeup))
