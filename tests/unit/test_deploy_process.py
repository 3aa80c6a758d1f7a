"""Pid files, detached sessions, stop/kill: exercised on real processes, really killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from clawstream.deploy.local.errors import StackError
from clawstream.deploy.local.process import Processes, pid_alive, session_members
from clawstream.deploy.local.wait import wait_for


@pytest.fixture
def procs(tmp_path: Path) -> Processes:
    return Processes(tmp_path / "run", tmp_path / "logs")


def _gone(pid: int) -> bool:
    return wait_for(lambda: not pid_alive(pid), timeout=5.0, interval=0.02) is None


def test_start_detaches_and_writes_pid_file(procs: Processes) -> None:
    info = procs.start("sleeper", ["sleep", "60"])
    try:
        assert info.started
        assert procs.is_running("sleeper")
        record = json.loads(procs.pid_file("sleeper").read_text())
        assert record["pid"] == info.pid
        assert record["argv"] == ["sleep", "60"]
        assert isinstance(record["start_time"], int)
        assert os.getsid(info.pid) == info.pid  # own session: Ctrl-C in our terminal misses it
        assert "clawstream starts sleeper" in procs.log_file("sleeper").read_text()
    finally:
        procs.kill("sleeper")


def test_start_is_idempotent(procs: Processes) -> None:
    first = procs.start("sleeper", ["sleep", "60"])
    try:
        second = procs.start("sleeper", ["sleep", "60"])
        assert not second.started
        assert second.pid == first.pid
        assert procs.names() == ["sleeper"]
    finally:
        procs.kill("sleeper")


def test_output_goes_to_the_log(procs: Processes) -> None:
    procs.start("echo", ["sh", "-c", "echo hello-from-child; sleep 60"])
    try:
        found = wait_for(lambda: "hello-from-child" in procs.tail("echo"), timeout=5.0)
        assert found is None
    finally:
        procs.kill("echo")


def test_stop_terminates_the_whole_session(procs: Processes) -> None:
    info = procs.start("tree", ["sh", "-c", "sleep 60 & sleep 60 & wait"])
    assert wait_for(lambda: len(session_members(info.pid)) >= 3, timeout=5.0) is None
    members = session_members(info.pid)
    assert procs.stop("tree", timeout=5.0)
    assert all(_gone(pid) for pid in members)
    assert not procs.pid_file("tree").exists()
    assert not procs.is_running("tree")


def test_stop_escalates_to_sigkill_after_timeout(procs: Processes) -> None:
    info = procs.start("stubborn", ["sh", "-c", "trap '' TERM; sleep 60"])
    assert wait_for(lambda: len(session_members(info.pid)) >= 2, timeout=5.0) is None
    t = time.monotonic()
    assert procs.stop("stubborn", timeout=0.5)
    assert time.monotonic() - t < 5.0
    assert _gone(info.pid)


def test_kill_is_immediate_even_if_sigterm_is_ignored(procs: Processes) -> None:
    info = procs.start("stubborn", ["sh", "-c", "trap '' TERM; sleep 60"])
    t = time.monotonic()
    assert procs.kill("stubborn")
    assert time.monotonic() - t < 2.0
    assert _gone(info.pid)
    restarted = procs.start("stubborn", ["sleep", "60"])  # a crashed component restarts
    try:
        assert restarted.started
        assert restarted.pid != info.pid
    finally:
        procs.kill("stubborn")


def test_stop_and_kill_of_unknown_name_do_nothing(procs: Processes) -> None:
    assert not procs.stop("nothing")
    assert not procs.kill("nothing")


def test_exited_process_leaves_a_stale_pid_file_that_is_cleaned(procs: Processes) -> None:
    info = procs.start("short", ["sh", "-c", "exit 3"])
    assert wait_for(lambda: not procs.is_running("short"), timeout=5.0) is None
    assert not procs.pid_file("short").exists()
    assert procs.pid("short") is None
    assert not pid_alive(info.pid)


def test_pid_file_of_a_dead_process_is_stale(procs: Processes) -> None:
    done = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True, check=True)
    dead_pid = int(done.stdout)
    procs.run_dir.mkdir(parents=True)
    procs.pid_file("ghost").write_text(json.dumps({"pid": dead_pid, "start_time": 1}))
    assert not procs.is_running("ghost")
    assert not procs.pid_file("ghost").exists()


def test_recycled_pid_is_not_signalled(procs: Processes) -> None:
    # Our own pid with another start time: a pid the kernel has handed to someone else.
    procs.run_dir.mkdir(parents=True)
    procs.pid_file("recycled").write_text(json.dumps({"pid": os.getpid(), "start_time": 1}))
    assert not procs.stop("recycled", timeout=0.1)  # we are still alive to assert this
    assert not procs.pid_file("recycled").exists()


def test_garbage_pid_file_is_stale(procs: Processes) -> None:
    procs.run_dir.mkdir(parents=True)
    procs.pid_file("junk").write_text("not json")
    assert not procs.is_running("junk")
    assert not procs.pid_file("junk").exists()


def test_a_zombie_is_not_alive() -> None:
    child = subprocess.Popen(["true"])  # not reaped until wait(): a zombie once it exits
    try:

        def zombie() -> bool:
            stat = Path(f"/proc/{child.pid}/stat").read_text()
            return stat[stat.rfind(")") + 2] == "Z"

        assert wait_for(zombie, timeout=5.0, interval=0.02) is None
        assert not pid_alive(child.pid)
    finally:
        child.wait()


def test_orphans_of_a_dead_leader_are_found_and_stopped(procs: Processes) -> None:
    # What `ray start --block` leaves behind when it alone is SIGKILLed: daemons holding ports.
    info = procs.start("tree", ["sh", "-c", "sleep 60 & sleep 60 & wait"])
    assert wait_for(lambda: len(session_members(info.pid)) >= 3, timeout=5.0) is None
    os.kill(info.pid, signal.SIGKILL)
    assert _gone(info.pid)
    assert not procs.is_running("tree")
    orphans = procs.orphans("tree")
    assert len(orphans) == 2
    assert procs.pid_file("tree").exists()  # kept: the orphans still need stopping
    assert procs.stop("tree", timeout=5.0)
    assert all(_gone(pid) for pid in orphans)
    assert not procs.pid_file("tree").exists()


def test_start_reclaims_orphans_first(procs: Processes) -> None:
    info = procs.start("tree", ["sh", "-c", "sleep 60 & wait"])
    assert wait_for(lambda: len(session_members(info.pid)) >= 2, timeout=5.0) is None
    os.kill(info.pid, signal.SIGKILL)
    assert _gone(info.pid)
    orphans = procs.orphans("tree")
    assert orphans
    fresh = procs.start("tree", ["sleep", "60"])
    try:
        assert fresh.started
        assert all(_gone(pid) for pid in orphans)
    finally:
        procs.kill("tree")


def test_missing_program_is_a_stack_error(procs: Processes) -> None:
    with pytest.raises(StackError, match="no-such-program"):
        procs.start("ghost", ["/nonexistent/no-such-program"])
    assert not procs.pid_file("ghost").exists()
