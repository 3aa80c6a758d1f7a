"""Files every answer and timeline event in Redis, for late readers.

One consumer group for all gateway processes (each record is filed once, by whichever
process owns its partition), committing only after Redis took the batch: answers that
arrive while every gateway is down are filed when one comes back, so a request whose
gateway was killed can still be fetched by id. A new group starts at the topics' end; it
never reads a topic from the beginning.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis

from clawstream.config import Settings
from clawstream.gateway.store import record_answer, record_event
from clawstream.schemas import DecodeError, decode
from clawstream.schemas.names import AGENT_ANSWER, AGENT_EVENT
from clawstream.streams.subscriber import ConsumerLoop, consumer
from clawstream.streams.topics import ANSWERS, EVENTS

log = logging.getLogger(__name__)
BATCH = 500


def group_id(settings: Settings) -> str:
    return f"{settings.app_id}-gateway-recorder"


class Recorder(ConsumerLoop):
    def __init__(self, settings: Settings) -> None:
        # A short session: a SIGKILLed gateway's partitions move to the others (or to its
        # restarted self) after 6 s, the broker's minimum, not librdkafka's 45 s.
        super().__init__(consumer(settings.bootstrap_servers, group_id(settings), **{
            "enable.auto.commit": False, "auto.offset.reset": "latest",
            "fetch.wait.max.ms": 100, "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000}), "clawstream-recorder")
        self._settings = settings
        self._redis = redis.Redis.from_url(settings.redis_url)
        self._assigned = threading.Event()

    def start(self, timeout_s: float = 45.0) -> None:
        """Join the group and wait for the first assignment (so answers from now on are
        filed); the reading goes on in a thread."""
        self._consumer.subscribe([ANSWERS.name, EVENTS.name],
                                 on_assign=lambda _c, _p: self._assigned.set())
        self._thread.start()
        if not self._assigned.wait(timeout_s):
            raise TimeoutError("the gateway recorder got no partitions from its group")

    def _step(self) -> None:
        messages = self._consumer.consume(BATCH, 0.2)
        records = [m for m in messages if not m.error()]
        if not records:
            return
        while not self._stop.is_set() and not self._file(records):
            time.sleep(1.0)  # Redis is away: keep the batch, commit nothing
        self._consumer.commit(asynchronous=True)

    def _file(self, messages: list[Any]) -> bool:
        ttl = self._settings.gateway_record_ttl_s
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                for msg in messages:
                    try:
                        name, record = decode(msg.value())
                    except DecodeError:
                        continue
                    if name == AGENT_ANSWER:
                        record_answer(pipe, dict(record), ttl)
                    elif name == AGENT_EVENT and record.get("request_id"):
                        record_event(pipe, dict(record), ttl)
                pipe.execute()
            return True
        except redis.RedisError as exc:
            log.warning("gateway recorder: Redis refused a batch (%s); retrying", exc)
            return False

    def stop(self, timeout_s: float = 5.0) -> None:
        super().stop(timeout_s)
        self._redis.close()
