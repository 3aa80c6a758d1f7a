"""Debian's ``redis-server`` on loopback: caches, rate-limit buckets and the side-effect ledger.

Persistence is off by default, on purpose: ``--save ""`` and ``--appendonly no``. In the
local stack Redis holds caches (worthless after a restart by design), token buckets (reset
is harmless) and the side-effect ledger, whose loss on a Redis crash can repeat a mutating
tool call; for local development that is the accepted trade for no fsync stalls and no
dump files. Set ``CLAWSTREAM_REDIS_PERSIST=true`` to get an append-only file (fsync every
second) when a test needs the ledger to survive a Redis restart.

Eviction is ``volatile-lru``: only keys with a TTL (cache entries) are evicted when
``maxmemory`` is reached; keys without a TTL (ledgers, budgets) are never evicted, and a
full Redis refuses writes rather than silently forgetting that a side effect happened.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from clawstream.config import Settings
from clawstream.deploy.local import credentials
from clawstream.deploy.local.errors import NotReadyError
from clawstream.deploy.local.ports import ensure_ports_free
from clawstream.deploy.local.process import Processes, ProcessInfo
from clawstream.deploy.local.tools import require
from clawstream.deploy.local.wait import wait_for

NAME = "redis"
READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0


def command(settings: Settings, binary: str = "redis-server") -> list[str]:
    """The ``redis-server`` command line (no config file: every choice is visible here)."""
    persistence = (
        ["--appendonly", "yes", "--appendfsync", "everysec"]
        if settings.redis_persist
        else ["--appendonly", "no"]
    )
    return [
        binary,
        "--bind",
        "127.0.0.1",
        "--port",
        str(settings.redis_port),
        "--protected-mode",
        "yes",
        "--daemonize",
        "no",
        "--logfile",
        "",
        "--dir",
        str(data_dir(settings)),
        "--save",
        "",
        *persistence,
        "--maxmemory",
        settings.redis_maxmemory,
        "--maxmemory-policy",
        "volatile-lru",
        *(["--aclfile", str(credentials.acl_file(settings))] if settings.auth else []),
    ]


def data_dir(settings: Settings) -> Path:
    return settings.state_dir / "redis"


def is_ready(settings: Settings, timeout: float = 0.5) -> bool:
    """True if Redis answers PING (as the admin: the default user is off)."""
    import redis

    client = redis.Redis.from_url(
        credentials.as_role(settings, credentials.ADMIN).redis_url,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
    )
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def start(
    settings: Settings,
    *,
    timeout: float = READY_TIMEOUT_S,
    note: Callable[[str], None] | None = None,
) -> ProcessInfo:
    """Start redis-server detached unless it runs, then wait for PING. Idempotent."""
    procs = Processes(settings.run_dir, settings.log_dir)
    info = procs.info(NAME)
    if info is None:
        procs.reclaim(NAME)  # leftovers of a crash may hold our ports
        binary = require("redis-server")
        ensure_ports_free({"redis_port": settings.redis_port}, component=NAME)
        data_dir(settings).mkdir(parents=True, exist_ok=True)
        if settings.auth:
            credentials.write_acl_file(settings)
        info = procs.start(NAME, command(settings, binary))

    def died() -> str | None:
        return None if procs.is_running(NAME) else "redis-server exited"

    reason = wait_for(lambda: is_ready(settings), timeout=timeout, interval=0.1, abort=died)
    if reason is not None:
        raise NotReadyError(
            f"redis on 127.0.0.1:{settings.redis_port}: {reason}. "
            f"Log {procs.log_file(NAME)} ends with:\n{procs.tail(NAME)}"
        )
    if settings.auth:
        credentials.apply_redis(settings)
    return info


def stop(settings: Settings, timeout: float = STOP_TIMEOUT_S) -> bool:
    """SIGTERM (Redis exits at once, nothing to save), SIGKILL after ``timeout``."""
    return Processes(settings.run_dir, settings.log_dir).stop(NAME, timeout)
