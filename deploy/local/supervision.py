"""What the workers' supervisors decide and record: the restart policy and the state file.

Kept apart from the supervising process (``supervisor.py``) so ``status`` and the worker
module read the state without importing the process's loop, and the policy is a plain
function of what happened (unit-tested).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from clawstream.config import Settings


@dataclass
class RestartPolicy:
    """When to start an exited worker again, or that it is crash-looping (None)."""

    base_s: float
    cap_s: float
    healthy_after_s: float
    limit: int
    quick_failures: int = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> RestartPolicy:
        return cls(settings.worker_restart_backoff_s, settings.worker_restart_backoff_cap_s,
                   settings.worker_restart_healthy_s, settings.worker_restart_limit)

    def after_exit(self, ran_s: float) -> float | None:
        """The delay before the next start of a worker that ran ``ran_s`` and failed."""
        self.quick_failures = 0 if ran_s >= self.healthy_after_s else self.quick_failures + 1
        if self.quick_failures > self.limit:
            return None
        return min(self.cap_s, self.base_s * 2 ** self.quick_failures)


@dataclass
class SupervisorState:
    """What ``clawstream status`` shows about a worker's supervisor."""

    state: str  # running, restarting, gave up, stopped
    worker_pid: int | None = None
    restarts: int = 0
    last_exit: str | None = None
    last_exit_at: float | None = None

    def summary(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        text = f"supervisor: {self.state}, {self.restarts} restart(s)"
        if self.last_exit and self.last_exit_at is not None:
            text += f", last exit {self.last_exit} {now - self.last_exit_at:.0f} s ago"
        return text


def name(index: int) -> str:
    return f"supervisor-{index}"


def state_file(settings: Settings, index: int) -> Path:
    return settings.run_dir / f"{name(index)}.json"


def read_state(settings: Settings, index: int) -> SupervisorState | None:
    try:
        return SupervisorState(**json.loads(state_file(settings, index).read_text()))
    except (OSError, ValueError, TypeError):
        return None
