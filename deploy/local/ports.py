"""Is a loopback port free, and if not, who holds it.

The stack checks its ports before starting anything, because a broker that fails to bind
prints the reason somewhere deep in its log while the caller only sees a readiness timeout.
Finding the holder reads ``/proc`` (Linux); elsewhere the error just omits it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Mapping
from pathlib import Path

from clawstream.deploy.local.errors import PortInUseError

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if a server could bind ``host:port`` now (TIME_WAIT leftovers do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def port_accepts(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel says is free right now (for auxiliary listeners nobody dials)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            local, state, inode = fields[1], fields[3], fields[9]
            if state == _LISTEN and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(inode)
    return inodes


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    text = raw.replace(b"\0", b" ").decode(errors="replace").strip()
    return text if len(text) <= 200 else text[:197] + "..."


def port_holder(port: int) -> str | None:
    """Describe the process listening on ``port`` ("pid 123: java ..."), or None if unknown."""
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in targets:
                        pid = int(entry.name)
                        return f"pid {pid}: {_cmdline(pid)}"
    return None


def ensure_ports_free(ports: Mapping[str, int], *, component: str) -> None:
    """Raise PortInUseError for the first port (named by its setting) that is taken.

    ``ports`` maps the settings field (e.g. ``kafka_port``) to its value, so the message can
    name the environment variable that moves the component elsewhere.
    """
    for field, port in ports.items():
        if port_is_free(port):
            continue
        holder = port_holder(port)
        who = f"it is held by {holder}" if holder else "the holder could not be identified"
        env = f"CLAWSTREAM_{field.upper()}"
        raise PortInUseError(
            f"{component}: port {port} ({env}) is already in use; {who}. "
            f"Stop that process, or point {env} at a free port.",
            port=port,
            holder=holder,
        )
