"""The publisher's contract without a broker: publishing never waits for one, and a caller
that needs the ack learns that it did not come."""

from __future__ import annotations

import time

import pytest

from clawstream.deploy.local.ports import free_port
from clawstream.streams.publisher import Publisher, PublishError


def test_publish_returns_before_any_broker_answers() -> None:
    # Nothing listens on this port: a publisher that flushed per message would block here.
    publisher = Publisher(f"127.0.0.1:{free_port()}")
    t = time.perf_counter()
    deliveries = [publisher.publish_raw("nowhere", b"k", b"v") for _ in range(200)]
    took = time.perf_counter() - t
    assert took < 1.0, f"200 publishes took {took:.2f} s"
    assert not any(d.done() for d in deliveries)
    with pytest.raises(PublishError, match="not acknowledged"):
        publisher.flush(0.3)
    with pytest.raises(PublishError):  # closing flushes too, and says what was not acked
        publisher.close(timeout_s=0.1)


def test_a_record_that_does_not_fit_its_schema_fails_at_once() -> None:
    publisher = Publisher(f"127.0.0.1:{free_port()}")
    try:
        with pytest.raises(Exception):  # noqa: B017  # the codec's own error type
            publisher.publish("t", "k", "clawstream.AgentRequest", {"request_id": 1})
    finally:
        publisher.close(timeout_s=0.1)


def test_a_closed_publisher_refuses_to_publish() -> None:
    publisher = Publisher(f"127.0.0.1:{free_port()}")
    publisher.close(timeout_s=0.1)
    with pytest.raises(PublishError, match="closed"):
        publisher.publish_raw("t", None, b"v")
