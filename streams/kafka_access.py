"""Which principal this process's Kafka clients log in as, for each cluster it talks to.

Clients are made deep inside readers and publishers that are handed a bootstrap string, so
the login is bound per broker address once, where a process starts (its settings name its
role's secret file), and every client of ours takes its configuration from
:func:`client_config`. A process that talks to two stacks (the test harness) binds each.
"""

from __future__ import annotations

from typing import Any, Protocol


class HasKafkaLogin(Protocol):
    @property
    def bootstrap_servers(self) -> str: ...

    def kafka_security(self) -> dict[str, str]: ...


_logins: dict[str, HasKafkaLogin] = {}


def bind(settings: HasKafkaLogin) -> None:
    """Clients of the brokers in ``settings`` log in as its role (anonymous with auth off).
    The secret is read when a client is made: binding before ``up`` has written it is
    fine, and a rotated secret reaches the next client."""
    for address in settings.bootstrap_servers.split(","):
        _logins[address.strip()] = settings


def bound(bootstrap: str) -> dict[str, str]:
    """The security settings bound to any broker of ``bootstrap`` ({} if none is bound)."""
    for address in bootstrap.split(","):
        found = _logins.get(address.strip())
        if found is not None:
            return found.kafka_security()
    return {}


def client_config(bootstrap: str, **extra: Any) -> dict[str, Any]:
    """A confluent-kafka client's configuration for ``bootstrap``: the bound login, then
    ``extra`` (keys with dots passed as a dict: ``client_config(b, **{"group.id": g})``)."""
    return {"bootstrap.servers": bootstrap, **bound(bootstrap), **extra}
