"""Port checks against a real listening socket."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from clawstream.deploy.local.errors import PortInUseError
from clawstream.deploy.local.ports import (
    ensure_ports_free,
    free_port,
    port_accepts,
    port_holder,
    port_is_free,
)


@pytest.fixture
def listener() -> Iterator[int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def test_listening_port_is_not_free(listener: int) -> None:
    assert not port_is_free(listener)
    assert port_accepts(listener)


def test_holder_is_identified(listener: int) -> None:
    holder = port_holder(listener)
    assert holder is not None
    assert f"pid {os.getpid()}" in holder


def test_ensure_ports_free_names_port_setting_and_holder(listener: int) -> None:
    with pytest.raises(PortInUseError) as err:
        ensure_ports_free({"kafka_port": listener}, component="kafka")
    message = str(err.value)
    assert str(listener) in message
    assert "CLAWSTREAM_KAFKA_PORT" in message
    assert f"pid {os.getpid()}" in message
    assert err.value.port == listener


def test_free_port_passes() -> None:
    port = free_port()
    assert port_is_free(port)
    assert not port_accepts(port)
    ensure_ports_free({"redis_port": port}, component="redis")
    assert port_holder(port) is None


def test_port_is_free_again_after_close() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    port = sock.getsockname()[1]
    sock.close()
    assert port_is_free(port)
