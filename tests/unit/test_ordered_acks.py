"""Acks go out in offset order per partition, so Faust never commits past a running step."""

from __future__ import annotations

from dataclasses import dataclass, field

from clawstream.processors.flow.acks import OrderedAcks


@dataclass
class _Message:
    tp: str
    offset: int


@dataclass
class _Event:
    message: _Message
    log: list[tuple[str, int]] = field(default_factory=list)

    def ack(self) -> None:
        self.log.append((self.message.tp, self.message.offset))


def test_a_finished_step_waits_for_earlier_offsets_of_its_partition_only() -> None:
    log: list[tuple[str, int]] = []
    acks = OrderedAcks()
    events = {(tp, n): _Event(_Message(tp, n), log) for tp in ("a", "b") for n in range(3)}
    for event in events.values():
        acks.track(event)
    acks.done(events["a", 2])
    acks.done(events["b", 0])
    assert log == [("b", 0)]  # a2 waits for a0 and a1; b is independent
    acks.done(events["a", 0])
    assert log == [("b", 0), ("a", 0)]
    acks.done(events["a", 1])
    assert log == [("b", 0), ("a", 0), ("a", 1), ("a", 2)]


def test_an_untracked_event_is_acked_at_once() -> None:
    log: list[tuple[str, int]] = []
    OrderedAcks().done(_Event(_Message("a", 7), log))
    assert log == [("a", 7)]
