"""A worker's local table store (RocksDB) is trusted only after a clean stop.

Faust writes a table change to the local RocksDB at once and to the changelog topic later
(buffered); the consumed offsets are committed only after the changelog and every output
were flushed. A worker that dies between the two (SIGKILL, a crash, a restart in place by
``exec``) leaves a local store *ahead* of what it committed: it holds the state after
events whose offsets were not committed and whose outputs (step commands, events, the
answer) may never have left. On its next start Faust keeps that store and reads the
changelog only from the store's own persisted offset, so the events read again are applied
to a state that already contains them: a step result is ignored as not in flight, a request
is a duplicate, and the outputs they made the first time are never made again. In
``bench chaos`` that lost answers (the conversation's state said answered; no answer was
ever sent).

So, like Kafka Streams after an unclean shutdown, a worker that did not stop cleanly
deletes its local store at start, and Faust rebuilds every partition it is given from the
changelog, which holds only what was flushed. A clean stop (SIGTERM: drained, committed,
flushed, stores closed) leaves a mark, and the next start keeps the store.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

CLEAN_MARK = "stopped-cleanly"


def prepare(datadir: Path) -> bool:
    """At start: keep the local store if the last stop was clean, else delete it. Returns
    whether it was deleted. The mark is consumed: until this run stops cleanly, it is not."""
    mark = datadir / CLEAN_MARK
    if mark.exists():
        mark.unlink()
        datadir.mkdir(parents=True, exist_ok=True)
        return False
    wiped = datadir.exists() and any(datadir.iterdir())
    if wiped:
        log.warning("%s: the last stop was not clean; deleting the local table store so "
                    "that the tables are recovered from their changelogs", datadir)
        shutil.rmtree(datadir)
    datadir.mkdir(parents=True, exist_ok=True)
    return wiped


def mark_clean(datadir: Path) -> None:
    """After a clean stop: the local store matches the changelog up to its persisted
    offsets, and the next start may keep it."""
    datadir.mkdir(parents=True, exist_ok=True)
    (datadir / CLEAN_MARK).touch()
