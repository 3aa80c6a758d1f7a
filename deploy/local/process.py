"""Detached processes with pid files: the supervisor of the local stack, kept tiny.

Each component runs in its own session (``setsid``), so it survives the CLI that started
it, Ctrl-C in that terminal does not reach it, and everything it spawns (Ray's daemons, a
worker's children) can be found and stopped together by session id. stdout and stderr go to
``log_dir/<name>.log``; ``run_dir/<name>.pid`` records the pid and the kernel's start time of
that pid, so a pid recycled by an unrelated process after a reboot or a crash is recognised
as stale instead of being signalled.

Finding session members reads ``/proc`` (Linux). Elsewhere only the process group is
signalled, which covers everything that did not move itself to a new group.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from clawstream.deploy.local.errors import StackError
from clawstream.deploy.local.wait import wait_for

# Processes started by this interpreter: polling their Popen reaps them, so a child that
# died is not mistaken for a live one while it lingers as a zombie.
_children: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class ProcessInfo:
    """A component's process: ``started`` is False when it was already running."""

    name: str
    pid: int
    started: bool
    log: Path


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (index 0 = state), or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


def _start_time(pid: int) -> int | None:
    fields = _proc_stat(pid)
    return int(fields[19]) if fields is not None and len(fields) > 19 else None


def pid_alive(pid: int) -> bool:
    """True if ``pid`` is a live process (zombies are dead; our own children get reaped)."""
    child = _children.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        _children.pop(pid, None)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _proc_stat(pid)
    return not (fields is not None and fields[0] in ("Z", "X"))


@dataclass(frozen=True)
class Exit:
    """How a process ended: ``code`` is its exit status (negative: the signal that killed
    it), or None when it was not our child and nobody can tell."""

    code: int | None

    @property
    def clean(self) -> bool:
        return self.code == 0

    def __str__(self) -> str:
        if self.code is None:
            return "exited (status unknown: not a child of this process)"
        if self.code < 0:
            try:
                return f"killed by {signal.Signals(-self.code).name}"
            except ValueError:
                return f"killed by signal {-self.code}"
        return f"exit code {self.code}"


def exit_of(pid: int) -> Exit | None:
    """None while ``pid`` runs; how it ended once it has (reaping it if it is our child)."""
    child = _children.get(pid)
    if child is not None:
        code = child.poll()
        if code is None:
            return None
        _children.pop(pid, None)
        return Exit(code)
    return None if pid_alive(pid) else Exit(None)


def session_members(sid: int) -> list[int]:
    """Live pids whose session id is ``sid`` (Linux only; empty list elsewhere)."""
    members: list[int] = []
    proc = Path("/proc")
    if not proc.is_dir():
        return members
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _proc_stat(int(entry.name))
        if (
            fields is not None
            and len(fields) > 3
            and int(fields[3]) == sid
            and fields[0] not in ("Z", "X")
        ):
            members.append(int(entry.name))
    return members


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def _signal_session(leader: int, sig: signal.Signals) -> None:
    """Send ``sig`` once to every process of the leader's session, even if the leader is gone.

    The leader's process group gets it through ``killpg``; members that moved to a group of
    their own (Ray's workers do) get it one by one. Nobody gets it twice: a second SIGTERM
    means "stop now, skip the clean shutdown" to some programs. Signalling by group and
    session id is safe after the leader died: Linux does not hand out a pid while it is still
    some group's or session's id.
    """
    group_signalled = False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(leader, sig)
        group_signalled = True
    if not group_signalled:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(leader, sig)
    for pid in session_members(leader):
        if group_signalled and _pgid(pid) == leader:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _session_gone(leader: int) -> bool:
    return not pid_alive(leader) and not session_members(leader)


class Processes:
    """Pid files in ``run_dir`` and logs in ``log_dir`` for the named components of one stack."""

    def __init__(self, run_dir: Path, log_dir: Path) -> None:
        self.run_dir = run_dir
        self.log_dir = log_dir

    def pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def names(self) -> list[str]:
        """Names that have a pid file (running or stale), sorted."""
        if not self.run_dir.is_dir():
            return []
        return sorted(p.stem for p in self.run_dir.glob("*.pid"))

    def _read(self, name: str) -> dict[str, object] | None:
        try:
            data = json.loads(self.pid_file(name).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None

    def _recorded_pid(self, name: str) -> int | None:
        data = self._read(name)
        if data is None:
            self.pid_file(name).unlink(missing_ok=True)
            return None
        pid = data["pid"]
        assert isinstance(pid, int)
        if pid_alive(pid):
            recorded, actual = data.get("start_time"), _start_time(pid)
            if isinstance(recorded, int) and actual is not None and actual != recorded:
                # Same pid, another process: ours is long gone, and so is its session.
                self.pid_file(name).unlink(missing_ok=True)
                return None
        return pid

    def pid(self, name: str) -> int | None:
        """The pid of a running component, or None; a stale pid file is removed on the way.

        The file is kept while the leader is dead but processes of its session live on
        (orphans, see ``orphans``), so ``stop``/``kill``/``reclaim`` can still find them.
        """
        pid = self._recorded_pid(name)
        if pid is None:
            return None
        if pid_alive(pid):
            return pid
        if not session_members(pid):
            self.pid_file(name).unlink(missing_ok=True)
        return None

    def orphans(self, name: str) -> list[int]:
        """Live processes of the component's session whose leader died.

        E.g. Ray's daemons after the ``ray start --block`` process was SIGKILLed: they keep
        the ports, and nothing else would ever stop them.
        """
        pid = self._recorded_pid(name)
        if pid is None or pid_alive(pid):
            return []
        return session_members(pid)

    def reclaim(self, name: str, timeout: float = 5.0) -> list[int]:
        """Stop the orphans of a dead leader (SIGTERM, SIGKILL after ``timeout``); their pids.

        Called before a component starts, so leftovers of a crash do not hold its ports.
        """
        found = self.orphans(name)
        if found:
            self.stop(name, timeout)
        return found

    def is_running(self, name: str) -> bool:
        return self.pid(name) is not None

    def info(self, name: str) -> ProcessInfo | None:
        """The running component as a ProcessInfo (``started`` False), or None."""
        pid = self.pid(name)
        return None if pid is None else ProcessInfo(name, pid, False, self.log_file(name))

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> ProcessInfo:
        """Start ``argv`` detached unless ``name`` already runs (then nothing happens)."""
        log = self.log_file(name)
        existing = self.info(name)
        if existing is not None:
            return existing
        self.reclaim(name)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            stamp = datetime.now(UTC).isoformat(timespec="seconds")
            out.write(f"\n=== {stamp} clawstream starts {name}: {' '.join(argv)}\n".encode())
            out.flush()
            try:
                child = subprocess.Popen(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=dict(env) if env is not None else None,
                    cwd=cwd,
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as exc:
                raise StackError(f"{name}: cannot run {argv[0]!r}: {exc}") from exc
        _children[child.pid] = child
        record = {
            "pid": child.pid,
            "start_time": _start_time(child.pid),
            "argv": list(argv),
            "started_at": stamp,
        }
        tmp = self.pid_file(name).with_suffix(".pid.tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(self.pid_file(name))
        return ProcessInfo(name, child.pid, started=True, log=log)

    def _session(self, name: str) -> int | None:
        """The session id to signal: the running leader, or a dead leader with orphans."""
        pid = self.pid(name)
        if pid is None and self.orphans(name):
            pid = self._recorded_pid(name)
        return pid

    def stop(self, name: str, timeout: float = 30.0) -> bool:
        """SIGTERM the component's whole session, SIGKILL what is left after ``timeout``.

        Returns True if something was running. The pid file is removed either way.
        """
        sid = self._session(name)
        if sid is None:
            return False
        _signal_session(sid, signal.SIGTERM)
        if wait_for(lambda: _session_gone(sid), timeout=timeout, interval=0.1) is not None:
            self._kill_session(sid)
        self.pid_file(name).unlink(missing_ok=True)
        return True

    def kill(self, name: str) -> bool:
        """SIGKILL the component's whole session at once (a crash, for tests). True if it ran."""
        sid = self._session(name)
        if sid is None:
            return False
        self._kill_session(sid)
        self.pid_file(name).unlink(missing_ok=True)
        return True

    def _kill_session(self, pid: int) -> None:
        _signal_session(pid, signal.SIGKILL)
        # SIGKILL cannot be ignored; what remains is the kernel tearing processes down.
        if wait_for(lambda: _session_gone(pid), timeout=10.0, interval=0.05) is not None:
            raise StackError(f"processes of session {pid} survived SIGKILL for 10 s")

    def tail(self, name: str, lines: int = 40) -> str:
        """The last ``lines`` lines of the component's log (for error messages)."""
        return tail_file(self.log_file(name), lines)


def tail_file(path: Path, lines: int = 40) -> str:
    """Last ``lines`` lines of a text file, reading at most its last 64 KiB."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 65536))
            data = fh.read()
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])
