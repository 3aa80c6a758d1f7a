"""Backpressure as the gateway sees it: requests published and not yet taken.

When the workers stop fetching (a lane is full, the model is overloaded), requests pile up
in ``agent.requests.interactive`` ahead of the coordinators' committed offsets. Past
``gateway_max_request_lag`` the gateway answers new requests 503 ``overloaded`` with a
Retry-After, so a client fails over or backs off instead of queueing more work behind a
wall. Measured once a second in a thread (watermarks and the coordinators' commits).
"""

from __future__ import annotations

import logging
import threading

from confluent_kafka import TopicPartition

from clawstream.config import Settings
from clawstream.streams.subscriber import consumer
from clawstream.streams.topics import REQUESTS_INTERACTIVE

log = logging.getLogger(__name__)
INTERVAL_S = 1.0


class RequestLag:
    def __init__(self, settings: Settings) -> None:
        # The coordinators' group, only to read its commits: this consumer never
        # subscribes, so it never joins the group.
        self._consumer = consumer(settings.bootstrap_servers, settings.app_id,
                                  **{"enable.auto.commit": False})
        self._limit = settings.gateway_max_request_lag
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="clawstream-lag", daemon=True)
        self.lag = 0

    def start(self) -> None:
        self._thread.start()

    @property
    def overloaded(self) -> bool:
        return self.lag > self._limit

    def measure(self) -> int:
        topic = REQUESTS_INTERACTIVE.name
        metadata = self._consumer.list_topics(topic, timeout=5.0).topics[topic]
        partitions = [TopicPartition(topic, p) for p in metadata.partitions]
        committed = self._consumer.committed(partitions, timeout=5.0)
        lag = 0
        for tp in committed:
            low, high = self._consumer.get_watermark_offsets(
                TopicPartition(topic, tp.partition), timeout=5.0)
            lag += high - (tp.offset if tp.offset >= 0 else low)
        return lag

    def _run(self) -> None:
        while not self._stop.wait(INTERVAL_S):
            try:
                self.lag = self.measure()
            except Exception as exc:  # the broker is away: keep the last figure
                log.debug("request lag not measured: %s", exc)
        self._consumer.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)
