"""The benchmark's workload generator: replayable, with the repetition it promises."""

from __future__ import annotations

from collections import Counter

import pytest

from benchmarks.workload import generate


def test_same_seed_same_workload_and_another_seed_differs() -> None:
    assert generate(200, seed=3) == generate(200, seed=3)
    assert generate(200, seed=3) != generate(200, seed=4)
    one, two = generate(50, run_id="a"), generate(50, run_id="b")
    assert [i.text for i in one] == [i.text for i in two]
    assert not {i.conversation_id for i in one} & {i.conversation_id for i in two}


def test_shares_and_repeat_rules() -> None:
    items = generate(2000, repeat_questions=0.3, repeat_lookups=0.2, repeat_documents=0.1,
                     min_gap=8)
    kinds = Counter(i.kind for i in items)
    assert kinds["repeat_question"] / len(items) == pytest.approx(0.3, abs=0.04)
    assert kinds["repeat_lookup"] / len(items) == pytest.approx(0.2, abs=0.04)
    assert kinds["repeat_document"] / len(items) == pytest.approx(0.1, abs=0.03)
    first_seen: dict[str, int] = {}
    for i in items:
        normalised = " ".join(i.text.split())
        if i.kind == "fresh":
            assert normalised not in first_seen
            first_seen[normalised] = i.index
        else:
            assert i.index - first_seen[normalised] >= 8
        if i.kind == "repeat_document":
            assert i.text != normalised
        if i.kind == "repeat_lookup":
            assert int(i.conversation_id.rsplit("-", 1)[1]) <= i.index - 8
    assert generate(100, repeat_questions=0, repeat_lookups=0, repeat_documents=0)[-1].kind \
        == "fresh"
    with pytest.raises(ValueError):
        generate(10, repeat_questions=0.8, repeat_lookups=0.3)
