"""Keep one Faust worker running: ``python -m clawstream.deploy.local.supervisor INDEX``.

A worker that exits on a failure is started again, after a backoff; one that exits cleanly
(status 0: it was stopped on purpose, e.g. by SIGTERM) is not, and its supervisor ends
too. Without this, a worker that died (a crash, an OOM kill, a restart in place that could
not reach the broker) stayed dead and the group ran at part capacity without a word.

One small supervising process per worker, each in its own session, and the worker in a
session of its own. Why one per worker, not one for all: the stack already starts, stops
and kills workers one by one (tests and benchmarks SIGKILL ``worker-1`` and start it again),
so a supervisor per worker keeps that API and needs no protocol to tell a shared supervisor
which workers to run; a supervisor's failure concerns one worker; and each is a loop around
one child, small enough to read at once. The worker's own session means SIGKILLing the
worker (a crash test) leaves its supervisor alive, and stopping the supervisor (SIGTERM)
first stops the worker gracefully (it drains), then exits.

Crash loops: an exit within ``worker_restart_healthy_s`` of the start counts as a quick
failure; each one doubles the backoff (``worker_restart_backoff_s`` up to
``worker_restart_backoff_cap_s``); after ``worker_restart_limit`` quick failures in a row
the supervisor gives up and exits. A run that lasted longer resets the count. What it
did is in ``run_dir/supervisor-<i>.json`` for ``clawstream status``, and in its log.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from dataclasses import asdict

from clawstream.config import Settings
from clawstream.deploy.local import worker
from clawstream.deploy.local.errors import StackError
from clawstream.deploy.local.process import Exit, Processes, exit_of
from clawstream.deploy.local.supervision import RestartPolicy, SupervisorState, state_file

log = logging.getLogger("clawstream.supervisor")
POLL_S = 0.2


class Supervisor:
    """The loop: start the worker, wait for it to exit, decide, start it again."""

    def __init__(self, settings: Settings, index: int) -> None:
        self.settings, self.index = settings, index
        self.procs = Processes(settings.run_dir, settings.log_dir)
        self.policy = RestartPolicy.from_settings(settings)
        self.state = SupervisorState("running")
        self._stop = threading.Event()

    def request_stop(self, *_: object) -> None:
        self._stop.set()

    def run(self) -> int:
        """Until stopped (0), or until the worker crash-loops (1)."""
        worker_name = worker.worker_name(self.index)
        while not self._stop.is_set():
            started = time.monotonic()
            ended = self._run_once()
            if ended is None:  # asked to stop
                break
            if ended.clean:
                log.info("%s exited cleanly (stopped on purpose); not restarting", worker_name)
                self._save("stopped", last_exit=str(ended))
                return 0
            ran = time.monotonic() - started
            delay = self.policy.after_exit(ran)
            exit_text = str(ended)
            if delay is None:
                log.error("%s exited (%s) after %.1f s: %d quick failures in a row, giving "
                          "up", worker_name, exit_text, ran, self.policy.quick_failures)
                self._save("gave up", last_exit=exit_text)
                return 1
            log.warning("%s exited (%s) after %.1f s; starting it again in %.1f s",
                        worker_name, exit_text, ran, delay)
            self._save("restarting", last_exit=exit_text)
            if self._stop.wait(delay):
                break
            self.state.restarts += 1
        log.info("stopping %s", worker_name)
        self.procs.stop(worker_name, worker.STOP_TIMEOUT_S)
        self._save("stopped")
        return 0

    def _run_once(self) -> Exit | None:
        """Start the worker and wait for it: how it ended, or None when asked to stop."""
        try:
            info = worker.spawn(self.settings, self.index)
        except StackError as exc:  # its port is taken, say: a failure like any other
            log.error("could not start %s: %s", worker.worker_name(self.index), exc)
            return Exit(None)
        self._save("running", worker_pid=info.pid)
        while not self._stop.wait(POLL_S):
            ended = exit_of(info.pid)
            if ended is not None:
                return ended
        return None

    def _save(self, state: str, **changes: object) -> None:
        self.state.state = state
        for key, value in changes.items():
            setattr(self.state, key, value)
        if "last_exit" in changes:
            self.state.last_exit_at = time.time()
        path = state_file(self.settings, self.index)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self.state)))
        tmp.replace(path)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s")
    supervisor = Supervisor(Settings(), int(argv[0]))
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
