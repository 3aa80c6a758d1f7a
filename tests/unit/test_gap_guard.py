"""The coordinator notices records Faust skipped and reads them again, once."""

from __future__ import annotations

from dataclasses import dataclass

from processors.gaps import GapGuard


@dataclass
class _Message:
    tp: str
    offset: int
    generation_id: int = 3


def test_a_jump_rewinds_to_the_first_missing_offset_and_passes_over_the_rest() -> None:
    guard = GapGuard()
    assert [guard.admit(_Message("p1", o)) for o in (36, 37, 38, 39)] == [None] * 4
    assert guard.admit(_Message("p1", 58)) == 40  # 40..57 were skipped: seek back to 40
    assert guard.admit(_Message("p1", 59)) == -1  # still buffered from before the seek
    assert guard.admit(_Message("other", 5)) is None  # other partitions are not held up
    assert [guard.admit(_Message("p1", o)) for o in range(40, 60)] == [None] * 20


def test_a_new_generation_starts_wherever_the_committed_offset_is() -> None:
    guard = GapGuard()
    assert guard.admit(_Message("p1", 10, generation_id=2)) is None
    assert guard.admit(_Message("p1", 50, generation_id=3)) is None
    assert guard.admit(_Message("p1", 50, generation_id=3)) == -1  # a repeat in one generation
