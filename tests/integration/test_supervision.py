"""Workers that come back, on the real stack: a SIGKILLed worker is started again by its
supervisor; a worker started while the broker is down waits for it and comes up when it is
back; meanwhile the running worker does not flood its log."""

from __future__ import annotations

import re
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from clawstream.config import Settings
from clawstream.deploy.local import kafka, status
from clawstream.deploy.local import worker as worker_proc
from clawstream.deploy.local.process import Processes
from clawstream.deploy.local.supervision import read_state
from tests.integration.flow import ask, await_in_file

pytestmark = pytest.mark.integration

OUTAGE_S = 25.0
LOG_LINE = re.compile(r"^\[[^\]]*\] \[\d+\] \[(WARNING|ERROR|CRITICAL)\] (.*)$")
REPEATED = re.compile(r" \[this message repeated \d+ more time\(s\) in the last \d+ s\]$")


def _served(settings: Settings) -> None:
    answer = ask(settings, agent="fault-flaky", conversation_id=f"sup-{uuid.uuid4().hex[:8]}",
                 text="go", options={"args0": '{"fail_attempts": 0, "output": "served"}'})
    assert (answer["status"], answer["text"]) == ("ok", "served")


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def test_a_sigkilled_worker_is_started_again_by_its_supervisor(worker: Settings) -> None:
    before = worker_proc.pid(worker, 0)
    assert worker_proc.kill(worker, 0)
    worker_proc.wait_ready(worker, 0)  # nobody but its supervisor starts it
    assert worker_proc.pid(worker, 0) not in (None, before)
    state = read_state(worker, 0)
    assert state is not None and state.restarts >= 1
    assert state.last_exit == "killed by SIGKILL"
    [row] = [r for r in status(worker) if r.name == "worker-0"]
    assert row.running and "last exit killed by SIGKILL" in row.detail
    _served(worker)


def test_a_worker_started_while_the_broker_is_down_comes_up_when_it_is_back(
        worker: Settings) -> None:
    procs = Processes(worker.run_dir, worker.log_dir)
    log0, log1 = worker_proc.log_file(worker, 0), worker_proc.log_file(worker, 1)
    from0, from1 = _size(log0), _size(log1)
    try:
        killed = time.monotonic()
        assert procs.kill(kafka.NAME)  # SIGKILL: the broker is gone
        worker_proc.start(worker, 1, wait=False)
        await_in_file(log1, from1, "does not answer; waiting for it", 60)
        time.sleep(OUTAGE_S)  # the outage itself: how long the broker stays away
        state = read_state(worker, 1)
        assert state is not None and (state.state, state.restarts) == ("running", 0)
        outage_log = log0.read_bytes()[from0:].decode(errors="replace")
        outage_s = time.monotonic() - killed
        kafka.start(worker)
        worker_proc.wait_ready(worker, 1)
        worker_proc.wait_ready(worker, 0)
        _served(worker)
    finally:
        kafka.start(worker)
        worker_proc.stop(worker, 1)
    # The running worker, meanwhile: each repeated warning or error once per interval.
    lines = Counter(REPEATED.sub("", m.group(2)) for m in map(LOG_LINE.match,
                                                              outage_log.splitlines()) if m)
    per_kind = outage_s / worker.log_repeat_interval_s + 2
    flood = {text[:60]: n for text, n in lines.items() if n > per_kind}
    assert not flood, f"more than {per_kind:.1f} lines in {outage_s:.0f} s: {flood}"
    assert sum(lines.values()) <= 4 * outage_s, lines.most_common(10)
