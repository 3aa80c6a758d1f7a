"""The local table store survives only a clean stop (``processors/local_state.py``): after
SIGKILL, a crash or a restart in place it may hold the state of events whose offsets were
not committed and whose outputs never left, and reading those events again against it
lost their answers (bench chaos). Deleted then, Faust rebuilds it from the changelog."""

from __future__ import annotations

from pathlib import Path

from clawstream.processors import local_state


def _store(datadir: Path) -> Path:
    table = datadir / "v1" / "tables" / "conversations-0.db"
    table.mkdir(parents=True)
    (table / "000001.log").write_text("state ahead of the changelog")
    return table


def test_after_a_stop_that_was_not_clean_the_store_is_deleted(tmp_path: Path) -> None:
    table = _store(tmp_path / "worker-0")
    assert local_state.prepare(tmp_path / "worker-0") is True
    assert not table.exists() and (tmp_path / "worker-0").is_dir()


def test_after_a_clean_stop_the_store_is_kept_once(tmp_path: Path) -> None:
    datadir = tmp_path / "worker-0"
    table = _store(datadir)
    local_state.mark_clean(datadir)
    assert local_state.prepare(datadir) is False and table.exists()
    # the mark is consumed: a crash of this run is unclean again
    assert local_state.prepare(datadir) is True and not table.exists()


def test_a_first_start_has_nothing_to_delete(tmp_path: Path) -> None:
    assert local_state.prepare(tmp_path / "new") is False
    assert (tmp_path / "new").is_dir()
