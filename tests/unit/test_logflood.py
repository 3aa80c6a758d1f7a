"""Repeated warnings and errors are logged once per interval, with a count (processors/logflood)."""

from __future__ import annotations

import io
import logging

from clawstream.processors.logflood import RepeatFilter, install


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _logger(name: str, *streams: io.StringIO, clock: Clock) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    repeat = RepeatFilter(10.0, clock=clock)
    for stream in streams:
        handler = logging.StreamHandler(stream)
        handler.addFilter(repeat)
        logger.addHandler(handler)
    return logger


def test_a_flood_of_one_error_is_one_line_per_interval_with_the_count() -> None:
    clock, out = Clock(), io.StringIO()
    log = _logger("flood.one", out, clock=clock)
    for i in range(200):  # 20 a second for 10 s, as a worker did while the broker was down
        clock.now = i * 0.05
        log.error("Unable connect to node with id %s: %s", 1, "Connect call failed")
    clock.now = 10.0
    log.error("Unable connect to node with id %s: %s", 1, "Connect call failed")
    lines = out.getvalue().splitlines()
    assert lines == [
        "Unable connect to node with id 1: Connect call failed",
        "Unable connect to node with id 1: Connect call failed "
        "[this message repeated 199 more time(s) in the last 10 s]"]


def test_other_messages_and_info_lines_are_not_held_back() -> None:
    clock, out = Clock(), io.StringIO()
    log = _logger("flood.other", out, clock=clock)
    log.error("broker down")
    log.error("broker down")
    log.warning("broker down")  # another level is another kind
    log.error("table write failed")
    for _ in range(3):
        log.info("heartbeat")
    assert out.getvalue().splitlines() == ["broker down", "broker down", "table write failed",
                                          "heartbeat", "heartbeat", "heartbeat"]


def test_every_handler_gets_the_same_lines_and_each_record_counts_once() -> None:
    clock, console, file = Clock(), io.StringIO(), io.StringIO()
    log = _logger("flood.two", console, file, clock=clock)
    for _ in range(5):
        log.error("same")
    clock.now = 11.0
    log.error("same")
    expected = ["same", "same [this message repeated 4 more time(s) in the last 11 s]"]
    assert console.getvalue().splitlines() == expected
    assert file.getvalue().splitlines() == expected


def test_install_puts_one_filter_on_every_handler_of_the_logger() -> None:
    logger = logging.getLogger("flood.install")
    logger.handlers = [logging.StreamHandler(io.StringIO()), logging.StreamHandler(io.StringIO())]
    repeat = install(logger, 5.0)
    assert all(h.filters == [repeat] for h in logger.handlers)
    assert repeat.interval_s == 5.0
