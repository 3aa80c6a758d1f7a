"""The answer index: who in this process waits for which request, fed from the topics.

A :class:`~clawstream.streams.subscriber.TopicTail` reads every partition of
``agent.answers``, ``agent.events`` and ``agent.deltas`` from the end it had at start-up
(no group: each gateway process sees everything and holds its own waiters). The reader thread drops
records of conversations nobody here waits on before decoding them (by Kafka key), and
hands the rest to the event loop, where each :class:`Watch` gets its request's events and
answer in order, and the model steps' deltas (``StepDelta``) of a streaming request as they
are generated.

The last ``RECENT_S`` seconds of records are also kept raw: a watch opened on a request
that is already running (an event stream, a replayed request) first gets that request's
recent records, so nothing falls between what the recorder already filed in Redis and
what arrives after the watch exists. Consumers drop repeats by event id.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from typing import Any

from clawstream.schemas import DecodeError, decode
from clawstream.schemas.names import AGENT_ANSWER, STEP_DELTA
from clawstream.streams.subscriber import TopicTail
from clawstream.streams.topics import ANSWERS, DELTAS, EVENTS

Record = dict[str, Any]
RECENT_S = 10.0
RECENT_MAX = 100_000


class Watch:
    """One waiter: the request's timeline events and its answer, as they arrive."""

    def __init__(self, request_id: str, key: bytes) -> None:
        self.request_id = request_id
        self.key = key
        self.ids = {request_id}
        self.queue: asyncio.Queue[tuple[str, Record]] = asyncio.Queue()

    def push(self, name: str, record: Record) -> None:
        self.queue.put_nowait((name, record))


class AnswerIndex:
    def __init__(self, bootstrap: str) -> None:
        self._watches: dict[str, set[Watch]] = {}
        self._keys: dict[bytes, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._open = 0
        self._lock = threading.Lock()
        self._recent: deque[tuple[float, bytes, bytes | None]] = deque(maxlen=RECENT_MAX)
        self._tail = TopicTail(bootstrap, (ANSWERS.name, EVENTS.name, DELTAS.name),
                               self._on_message)

    async def start(self) -> None:
        """Pin the topics' ends, then serve: a request published after this returns has its
        answer seen."""
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._tail.start)

    def stop(self) -> None:
        self._tail.stop()

    @property
    def alive(self) -> bool:
        return self._tail.alive

    @property
    def waiting(self) -> int:
        """Waiters in this process (the gateway's own in-flight measure)."""
        return self._open

    def watch(self, request_id: str, conversation_id: str) -> Watch:
        """Start watching ``request_id``; its records of the last seconds come first."""
        watch = Watch(request_id, conversation_id.encode())
        self._watches.setdefault(request_id, set()).add(watch)
        with self._lock:
            self._keys[watch.key] = self._keys.get(watch.key, 0) + 1
            recent = [value for _, key, value in self._recent if key == watch.key]
        self._open += 1
        for value in recent:
            decoded = _decode(value)
            if decoded is not None and decoded[1].get("request_id") == request_id:
                watch.push(*decoded)
        return watch

    def follow(self, watch: Watch, request_id: str) -> None:
        """Also deliver ``request_id``'s records to ``watch`` (a duplicate request is
        answered by the first one, in the same conversation)."""
        if request_id not in watch.ids:
            watch.ids.add(request_id)
            self._watches.setdefault(request_id, set()).add(watch)

    def close(self, watch: Watch) -> None:
        if not watch.ids:
            return  # closed already
        self._open -= 1
        for request_id in watch.ids:
            watches = self._watches.get(request_id)
            if watches is not None:
                watches.discard(watch)
                if not watches:
                    del self._watches[request_id]
        with self._lock:
            count = self._keys.get(watch.key, 0) - 1
            if count > 0:
                self._keys[watch.key] = count
            else:
                self._keys.pop(watch.key, None)
        watch.ids = set()

    def _on_message(self, _topic: str, key: bytes | None, value: bytes | None) -> None:
        """Reader thread: remember it raw, filter by key, decode, hand over to the loop."""
        if key is None or self._loop is None:
            return
        now = time.monotonic()
        with self._lock:
            self._recent.append((now, key, value))
            while self._recent and self._recent[0][0] < now - RECENT_S:
                self._recent.popleft()
            wanted = key in self._keys
        if not wanted:
            return
        decoded = _decode(value)
        if decoded is not None and decoded[1].get("request_id"):
            self._loop.call_soon_threadsafe(self._deliver, decoded[1]["request_id"], *decoded)

    def _deliver(self, request_id: str, name: str, record: Record) -> None:
        for watch in list(self._watches.get(request_id, ())):
            watch.push(name, record)


def _decode(value: bytes | None) -> tuple[str, Record] | None:
    try:
        name, record = decode(value)
    except DecodeError:
        return None
    return name, dict(record)


def is_answer(name: str) -> bool:
    return name == AGENT_ANSWER


def is_delta(name: str) -> bool:
    return name == STEP_DELTA
