"""Restart the worker in place: the same command line in a fresh process image.

For the moments the worker can no longer trust its own consumer (a stall, records fetched
and never delivered). To the group this is a crash and a restart, which the reliability
contracts already cover: records not committed are delivered again, and the dedup table,
the step rules and the side-effect ledger make the repeats harmless. ``exec`` keeps the
pid, so the local stack's pid file stays true, and in a container no liveness probe has to
notice first. File descriptors are close-on-exec, RocksDB's lock files included.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

log = logging.getLogger(__name__)


def restart_in_place(reason: str) -> NoReturn:
    log.error("%s; restarting the worker in place", reason)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, sys.orig_argv)
