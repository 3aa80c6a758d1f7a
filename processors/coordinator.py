"""The per-conversation coordinator: the only writer of a conversation's state.

Besides requests and step results it consumes wake-ups. A sweep (a Faust timer on every
worker) looks at the conversations of the partitions this worker owns and, for each one
with a retry, step budget or deadline due, sends a wake-up to the coordinator's own topic
keyed by the conversation. Faust tables may only be changed from stream iteration, and a
wake-up on the conversation's partition is handled in order with its other events, so the
rules stay single-writer and replayable. Due times live in the table (recovered on
rebalance); the in-memory index only saves the sweep from reading RocksDB every tick.

Batch requests come in through an agent of their own that admits at most
``coordinator_batch_active`` batch conversations per worker at a time: a flood of batch
requests then waits in Kafka instead of in front of interactive requests and results.
Both agents write the same tables, so each event is handled under its conversation's lock.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import weakref
from collections.abc import Callable
from typing import Any, cast

import faust
import redis.asyncio as aioredis
from faust.exceptions import PartitionsMismatch
from faust.types import TP

from clawstream.config import Settings
from clawstream.processors.answered import ALREADY_SENT, PriorAnswers, without_answers_to
from clawstream.processors.app import WorkerTables, WorkerTopics
from clawstream.processors.canary.routing import with_routes
from clawstream.processors.conversation import (
    Decision,
    Rules,
    abort,
    fresh_dedup,
    hard_abort,
    needs_gate,
    next_due_ms,
    refuse_unprocessable,
    reject,
)
from clawstream.processors.delegation import with_parent_results
from clawstream.processors.emit import Emitter, now_ms
from clawstream.processors.flow import coordination
from clawstream.processors.flow.flags import FlagView
from clawstream.processors.handling import decide, settle
from clawstream.processors.keys import dedup_key
from clawstream.processors.observe import observe_result_back
from clawstream.processors.records import Output
from clawstream.processors.restart import restart_in_place
from clawstream.processors.state import Conversation, DedupEntry, upgrade
from clawstream.processors.validation import Rejection
from clawstream.schemas import DecodeError, decode
from clawstream.schemas.names import AGENT_REQUEST, CANCEL, STEP_RESULT, WAKEUP
from clawstream.schemas.records import (
    AgentAnswer,
    AgentRequest,
    Cancel,
    StepResult,
    Wakeup,
    WireRecord,
)
from clawstream.streams.topics import REQUESTS_BATCH, REQUESTS_INTERACTIVE, RESULTS, request_topic

log = logging.getLogger(__name__)

FULL_SCAN_EVERY = 20
"""Sweeps between two rebuilds of the index from the table (partitions move on rebalance)."""
DELIVERED = "clawstream.coordinator.delivered"
"""An audit event (``sys.audit``, with the conversation id and the outputs' schema names)
raised when an event's outputs are on the broker and its state is not yet written: where a
crash test SIGKILLs a worker (``fixtures/faults.py``). Without an audit hook it costs next
to nothing."""
RESEND_AFTER_MS = 2000
"""A wake-up that changed nothing (or got lost) is sent again after this long."""
ACCEPTED = {REQUESTS_INTERACTIVE.name: (AGENT_REQUEST,), REQUESTS_BATCH.name: (AGENT_REQUEST,),
            RESULTS.name: (STEP_RESULT, WAKEUP, CANCEL)}
"""What each of the coordinator's topics carries; anything else is refused or
dead-lettered. Requests (a sub-agent's too) come on the request topics; what concerns a
running conversation (step results, wake-ups, cancels) on the results topic."""


class BatchSlots:
    """The conversations running a batch request on this worker, and room for more.

    Rebuilt from the table on every full scan, so conversations that moved to another
    worker in a rebalance do not hold slots here for long."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active: set[str] = set()
        self._changed = asyncio.Condition()

    async def wait_for_room(self) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: len(self.active) < self.limit)

    async def track(self, conversation_id: str, conv: Conversation | None) -> None:
        active = conv["active"] if conv else None
        if active and active["request"]["lane"] == "batch":
            self.active.add(conversation_id)
        elif conversation_id in self.active:
            self.active.discard(conversation_id)
            async with self._changed:
                self._changed.notify_all()


class Coordinator:
    """The coordinator of one worker: its tables, the pure rules, and what they send."""

    def __init__(self, *, worker_name: str, settings: Settings, rules: Rules,
                 tables: WorkerTables, emitter: Emitter, redis: aioredis.Redis,
                 flags: Callable[[], FlagView], prior_answers: PriorAnswers) -> None:
        self.worker_name = worker_name
        self.settings = settings
        self._rules = rules
        self.conversations = tables.conversations
        self.request_dedup = tables.request_dedup
        self.emitter = emitter
        self.redis = redis
        self.flags = flags
        self.prior_answers = prior_answers
        self.batch_slots = BatchSlots(settings.coordinator_batch_active)
        self._due: dict[str, int] = {}
        self._woken: dict[str, tuple[int, int]] = {}  # conversation -> (due, when it went)
        self._sweeps = 0
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary())

    @property
    def rules(self) -> Rules:
        """The rules with the routing rules the flags hold now (canaries, promotions)."""
        return with_routes(self._rules, self.flags().values)

    def install(self, app: faust.App, topics: WorkerTopics) -> None:
        """Register the coordinator's agents and sweep timer on ``app``."""
        app.agent(topics.coordinator, name="clawstream.coordinate")(self.coordinate)
        app.agent(topics.batch_requests, name="clawstream.admit_batch")(self.admit_batch)
        app.timer(interval=self.settings.sweep_interval_s, name="clawstream.sweep")(self.sweep)
        app.on_partitions_assigned.connect(self._on_assigned)

    async def _on_assigned(self, _app: Any, /, *assigned: set[TP], signal: Any,
                           **_kwargs: Any) -> None:
        """Partitions may have been another worker's since: read their answers again (Faust's
        signal passes the topic partitions now assigned)."""
        self.prior_answers.forget({tp.partition for tps in assigned for tp in tps
                                   if tp.topic in ACCEPTED})

    async def coordinate(self, stream: faust.StreamT) -> None:
        async for event in stream.events():
            await self._process(event)

    async def admit_batch(self, stream: faust.StreamT) -> None:
        async for event in stream.events():
            await self.batch_slots.wait_for_room()
            await self._process(event)

    async def _process(self, event: Any) -> None:
        try:
            name, record = decode(event.value)
        except DecodeError as exc:
            log.warning("dead-lettering undecodable message: %s", exc)
            await self.emitter.dead_letter(event, str(exc), "DecodeError")
            return
        topic = event.message.topic
        if name not in ACCEPTED.get(topic, ()):
            await self._misplaced(event, topic, name, record)
            return
        conversation_id = cast(AgentRequest | StepResult | Wakeup | Cancel,
                               record)["conversation_id"]
        source = f"{topic}/{event.message.partition}/{event.message.offset}"
        lock = self._locks.get(conversation_id)
        if lock is None:
            lock = self._locks[conversation_id] = asyncio.Lock()
        async with lock:
            try:
                await self._handle(name, record, source)
            except PartitionsMismatch as exc:
                # The worker's topic metadata is at fault, not the message: a fresh process
                # reads it again (see streams.topics.changelog_topics for how it happened).
                restart_in_place(f"a table write failed: {exc}")
            except Exception as exc:
                # A poison message must not stop every other conversation on this worker,
                # nor leave its request without an answer.
                log.exception("dead-lettering %s that could not be processed", name)
                dlq_id = await self.emitter.dead_letter(event, f"processing failed: {exc!r}",
                                                        type(exc).__name__, record)
                await self._answer_unprocessable(name, record, exc, dlq_id)

    async def _misplaced(self, event: Any, topic: str, name: str, record: WireRecord) -> None:
        """A record on a topic that does not carry its kind: a request sent to the results
        topic is refused (answered), anything else dead-lettered."""
        if name == AGENT_REQUEST:
            request = cast(AgentRequest, record)
            where = request_topic(request["lane"]).name
            refusal = Rejection("invalid_request", f"invalid request: requests go to {where}, "
                                f"this one came on {topic}", 0.0)
            await self._apply(request["conversation_id"],
                              reject(None, request, refusal, now_ms()))
            return
        await self.emitter.dead_letter(event, f"unexpected {name} on {topic}",
                                       "UnexpectedSchema", record)

    async def _answer_unprocessable(self, name: str, record: WireRecord, exc: Exception,
                                    dlq_id: str) -> None:
        """After a failure of our own code: the request it concerns still gets its answer."""
        reason = (f"the coordinator could not process this request's {name.split('.')[-1]} "
                  f"({type(exc).__name__}: {exc}); dead letter {dlq_id}")
        if name == AGENT_REQUEST:
            request = cast(AgentRequest, record)
            key = dedup_key(request["tenant_id"], request["conversation_id"],
                            request["idempotency_key"])
            if self.request_dedup.get(key) is None:
                decision = refuse_unprocessable(request, reason, now_ms())
                await self._apply(request["conversation_id"], decision, key)
            return
        conversation_id = cast(StepResult | Wakeup | Cancel, record)["conversation_id"]
        conv = self._state(conversation_id)
        if conv is None or conv["active"] is None:
            return
        try:
            decision = abort(conv, reason, now_ms(), self.rules)
        except Exception:
            log.exception("aborting %s failed; answering its requests failed", conversation_id)
            decision = hard_abort(conv, reason, now_ms())
        await self._apply(conversation_id, decision)

    async def _handle(self, name: str, record: WireRecord, source: str) -> None:
        conversation_id = cast(AgentRequest | StepResult | Wakeup | Cancel,
                               record)["conversation_id"]
        conv = self._state(conversation_id)
        key = dedup = rejection = None
        if name == AGENT_REQUEST:
            request = cast(AgentRequest, record)
            key = dedup_key(request["tenant_id"], conversation_id, request["idempotency_key"])
            dedup = fresh_dedup(self.request_dedup.get(key), request)
            if needs_gate(dedup, request, self.rules):
                rejection = await coordination.gate(request, conv, self.settings,
                                                    self.flags(), self.redis)
        elif name == STEP_RESULT:
            observe_result_back(cast(StepResult, record), now_ms())
        decision = decide(name, record, conv, dedup, now_ms(), self.rules, source, rejection)
        await self._route_and_apply(conversation_id, decision, key)

    async def _route_and_apply(self, conversation_id: str, decision: Decision,
                               dedup_key: str | None = None) -> None:
        settled = settle(decision, self.rules, self.settings, self.flags(), now_ms())
        await coordination.archive(self.redis, settled.archive)
        await self._apply(conversation_id, settled.decision, dedup_key)

    async def _apply(self, conversation_id: str, decision: Decision,
                     dedup_key: str | None = None) -> None:
        """Send the decision's outputs, and once the broker has all of them, write the
        state (the conversation, and under ``dedup_key`` the request's dedup entry).

        In this order a worker killed at any point leaves a state that is never ahead of
        its outputs: the event, read again (its offset is committed only after the
        changelog), is applied again to the state before it and its outputs are sent
        again (step commands are claimed in the ledger, results of steps not in flight are
        ignored). The other order lost answers: see ``Emitter.deliver``."""
        outputs = with_parent_results(await self._first_answers_only(decision, dedup_key))
        await self.emitter.deliver(outputs)
        sys.audit(DELIVERED, conversation_id, tuple(o.schema for o in outputs))
        if decision.conversation is not None:  # a stray wake-up creates no conversation
            self.conversations[conversation_id] = decision.conversation
        if dedup_key is not None and decision.dedup is not None:
            self.request_dedup[dedup_key] = decision.dedup
        for output in outputs:
            if output.answer is not None:
                self._mark_answered(output.answer)
                self.prior_answers.note(conversation_id, output.answer["request_id"])
        self._track(conversation_id, decision.conversation)
        await self.batch_slots.track(conversation_id, decision.conversation)

    async def _first_answers_only(self, decision: Decision, decided_key: str | None
                                  ) -> list[Output]:
        """The decision's outputs less the answers the answers topic already has (an event
        handled again after a crash: see ``processors.answered``). The state is still
        written as decided: it says answered, as the log does."""
        sent: set[str] = set()
        for a in (o.answer for o in decision.outputs):
            if a is None:
                continue
            key = dedup_key(a["tenant_id"], a["conversation_id"], a["idempotency_key"])
            entry = cast(DedupEntry | None, decision.dedup if key == decided_key
                         else self.request_dedup.get(key))
            run = (len(entry.get("redriven", []))
                   if entry and entry["request_id"] == a["request_id"] else 0)
            if await self.prior_answers.already_sent(a["conversation_id"], a["request_id"],
                                                     run):
                sent.add(a["request_id"])
        if not sent:
            return decision.outputs
        for request_id in sorted(sent):
            log.info("request %s: %s", request_id, ALREADY_SENT)
        return without_answers_to(decision.outputs, sent, now_ms(), self.worker_name)

    def _mark_answered(self, a: AgentAnswer) -> None:
        """Whatever path answered a request (result, wake-up, rejection), its dedup entry
        says so and with which status: only a failed request may be redriven. Another
        request under the same key (a refused conflict) leaves the entry alone."""
        key = dedup_key(a["tenant_id"], a["conversation_id"], a["idempotency_key"])
        entry = cast(DedupEntry | None, self.request_dedup.get(key)) or DedupEntry(
            request_id=a["request_id"], status="answered", redriven=[])
        if entry["request_id"] != a["request_id"]:
            return
        self.request_dedup[key] = {**entry, "status": "answered", "answer_status": a["status"]}

    def _state(self, conversation_id: str) -> Conversation | None:
        conv = cast(Conversation | None, self.conversations.get(conversation_id))
        return upgrade(conv) if conv is not None else None

    def _track(self, conversation_id: str, conv: Conversation | None) -> None:
        due = next_due_ms(conv, self.rules)
        if due is None:
            self._due.pop(conversation_id, None)
            self._woken.pop(conversation_id, None)
        else:
            self._due[conversation_id] = due

    async def sweep(self) -> None:
        self._sweeps += 1
        if self._sweeps % FULL_SCAN_EVERY == 1:
            self._due.clear()
            stale = set(self.batch_slots.active)
            for conversation_id, stored in self.conversations.items():
                conv = upgrade(stored)
                self._track(conversation_id, conv)
                await self.batch_slots.track(conversation_id, conv)
                stale.discard(conversation_id)
            for conversation_id in stale:
                await self.batch_slots.track(conversation_id, None)
        now = now_ms()
        for conversation_id, due in list(self._due.items()):
            woken = self._woken.get(conversation_id)
            if due > now or (woken and woken[0] == due and now - woken[1] < RESEND_AFTER_MS):
                continue
            self._woken[conversation_id] = (due, now)
            wakeup: Wakeup = {"conversation_id": conversation_id, "due_ms": due,
                              "sent_at_ms": now, "worker": self.worker_name}
            await self.emitter.send(Output(RESULTS.name, conversation_id, WAKEUP, wakeup))
