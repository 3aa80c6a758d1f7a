"""Topic creation asks again on the errors a settling cluster gives, and only on those."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from clawstream.streams import admin


def _exc(code: int) -> KafkaException:
    return KafkaException(KafkaError(code))


@pytest.mark.parametrize("code", [KafkaError._DESTROY_BROKER, KafkaError._TRANSPORT,
                                  KafkaError._TIMED_OUT, KafkaError.NOT_CONTROLLER])
def test_settling_cluster_errors_are_transient(code: int) -> None:
    assert admin.is_transient(_exc(code))


@pytest.mark.parametrize("code", [KafkaError.INVALID_REPLICATION_FACTOR,
                                  KafkaError.TOPIC_AUTHORIZATION_FAILED,
                                  KafkaError.POLICY_VIOLATION])
def test_configuration_errors_are_not_transient(code: int) -> None:
    assert not admin.is_transient(_exc(code))


def _flaky(failures: list[KafkaException], calls: list[int]):  # type: ignore[no-untyped-def]
    def ensure_once(_admin, _specs, _partitions, _timeout, _rf, _isr, changes):  # type: ignore[no-untyped-def]
        calls.append(1)
        if failures:
            raise failures.pop(0)
        changes.created.append("agent.requests")
    return ensure_once


def test_a_dropped_broker_handle_is_asked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(admin, "_ensure_once",
                        _flaky([_exc(KafkaError._DESTROY_BROKER)] * 2, calls))
    changes = admin.ensure_topics("127.0.0.1:1", 4, "app", sleep=lambda _s: None)
    assert len(calls) == 3
    assert changes.created == ["agent.requests"]


def test_a_configuration_error_is_raised_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(admin, "_ensure_once",
                        _flaky([_exc(KafkaError.INVALID_REPLICATION_FACTOR)], calls))
    with pytest.raises(KafkaException):
        admin.ensure_topics("127.0.0.1:1", 4, "app", sleep=lambda _s: None)
    assert len(calls) == 1


def test_attempts_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(admin, "_ensure_once",
                        _flaky([_exc(KafkaError._TRANSPORT)] * 10, calls))
    with pytest.raises(KafkaException):
        admin.ensure_topics("127.0.0.1:1", 4, "app", attempts=3, sleep=lambda _s: None)
    assert len(calls) == 3
