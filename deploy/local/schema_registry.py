"""Apicurio Registry on loopback: the stack's Confluent-compatible schema registry.

Records in Confluent's wire format (magic byte 0, a 4-byte schema id, the Avro body) need
a registry that hands out those ids and refuses a schema change old readers cannot follow.
Apicurio Registry 2.6 is the one that runs here: its runnable tar.gz is on Maven Central
(Confluent's registry is not, Karapace is not on PyPI), and 3.x needs Java 21. Clients use
its Confluent-compatible API, ``settings.schema_registry_url`` (``/apis/ccompat/v7``).

Choices, all on the command line:

- H2 file storage in ``<state_dir>/registry``: an id names a schema in every record ever
  written, so ids must survive a restart (the in-memory default hands them out again to
  other schemas). ``WRITE_DELAY=0`` makes each commit reach the file before the answer: with
  H2's default (flush within 0.5 s) a registry SIGKILLed just after a registration forgot
  the schema (measured).
- Canonical hashing: the same schema with other whitespace or key order gets the same id.
- Global compatibility BACKWARD, set once the registry answers (Apicurio's default is
  NONE): a new version must read what the previous one wrote.
- A small heap, the serial GC and the C1 compiler only: a registry of a few dozen schemas
  needs no more, and starts in ~5 s (~155 MiB resident).

The app is fetched once into ``~/.cache/clawstream/apicurio-registry-<version>/app`` (outside
the state dir, like Kafka's jars); Java's temp files (Vert.x's file cache) go to the data dir.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from clawstream.config import Settings
from clawstream.deploy.local.errors import NotReadyError, StackError
from clawstream.deploy.local.maven import cache_root, fetch_archive
from clawstream.deploy.local.ports import ensure_ports_free
from clawstream.deploy.local.process import Processes, ProcessInfo
from clawstream.deploy.local.tools import require_java
from clawstream.deploy.local.wait import wait_for

NAME = "registry"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
COMPATIBILITY = "BACKWARD"


def coordinates(version: str) -> str:
    """The Maven coordinates of the runnable app (the ``all`` tar.gz: runner jar + lib/)."""
    return f"io.apicurio:apicurio-registry-app:{version}:tar.gz:all"


def app_dir(version: str) -> Path:
    """Where the unpacked app of ``version`` lives once fetched."""
    return cache_root() / f"apicurio-registry-{version}" / "app"


def _runner(version: str) -> str:
    return f"apicurio-registry-app-{version}-runner.jar"


def app_present(version: str) -> bool:
    """True if the cache holds the unpacked app (the folder appears only when complete)."""
    return (app_dir(version) / _runner(version)).is_file()


def ensure_app(version: str, *, timeout: float = 900.0) -> Path:
    """Fetch and unpack the app with Maven unless cached; return its runner jar."""
    return fetch_archive(coordinates(version), app_dir(version), _runner(version),
                         timeout=timeout) / _runner(version)


def data_dir(settings: Settings) -> Path:
    return settings.state_dir / NAME


def jdbc_url(settings: Settings) -> str:
    """H2 in a file of the data dir, every commit written through (see the module doc)."""
    return f"jdbc:h2:file:{data_dir(settings) / 'registry'};WRITE_DELAY=0"


def command(settings: Settings, java: str, jar: Path) -> list[str]:
    """The ``java -jar`` command line; every choice is a ``-D`` flag here, no config file."""
    return [
        java,
        "-Xms64m",
        f"-Xmx{settings.schema_registry_heap}",
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
        "-XX:+ExitOnOutOfMemoryError",
        f"-Djava.io.tmpdir={data_dir(settings) / 'tmp'}",
        "-Dquarkus.http.host=127.0.0.1",
        f"-Dquarkus.http.port={settings.schema_registry_port}",
        "-Dregistry.ccompat.use-canonical-hash=true",
        f"-Dquarkus.datasource.jdbc.url={jdbc_url(settings)}",
        "-jar",
        str(jar),
    ]


def is_ready(settings: Settings, timeout: float = 1.0) -> bool:
    """True if the Confluent-compatible API lists subjects (storage open, HTTP up)."""
    import httpx

    try:
        response = httpx.get(f"{settings.schema_registry_url}/subjects", timeout=timeout)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def ensure_compatibility(settings: Settings, level: str = COMPATIBILITY,
                         timeout: float = 5.0) -> str | None:
    """Make ``level`` the global compatibility; the previous level if it changed, else None.

    Idempotent: a registry already at ``level`` is only read.
    """
    import httpx

    config = f"{settings.schema_registry_url}/config"
    try:
        current = httpx.get(config, timeout=timeout).raise_for_status().json()
        previous = str(current.get("compatibilityLevel", ""))
        if previous == level:
            return None
        httpx.put(config, json={"compatibility": level}, timeout=timeout).raise_for_status()
    except (httpx.HTTPError, ValueError) as exc:
        raise StackError(f"schema registry on {settings.schema_registry_url}: could not set "
                         f"the global compatibility to {level}: {exc}") from exc
    return previous or "unset"


def start(
    settings: Settings,
    *,
    timeout: float = READY_TIMEOUT_S,
    note: Callable[[str], None] | None = None,
) -> ProcessInfo:
    """Fetch the app if needed, start it unless it runs, wait until it answers, then set
    the global compatibility. Idempotent."""
    say = note or (lambda _msg: None)
    procs = Processes(settings.run_dir, settings.log_dir)
    info = procs.info(NAME)
    if info is None:
        procs.reclaim(NAME)  # leftovers of a crash may hold our port
        java = require_java()
        version = settings.schema_registry_version
        if not app_present(version):
            say(f"fetching Apicurio Registry {version} from Maven Central")
        jar = ensure_app(version)
        ensure_ports_free({"schema_registry_port": settings.schema_registry_port},
                          component=NAME)
        (data_dir(settings) / "tmp").mkdir(parents=True, exist_ok=True)
        info = procs.start(NAME, command(settings, java, jar), cwd=data_dir(settings))

    def died() -> str | None:
        return None if procs.is_running(NAME) else "the registry process exited"

    reason = wait_for(lambda: is_ready(settings), timeout=timeout, interval=0.2, abort=died)
    if reason is not None:
        raise NotReadyError(f"schema registry on {settings.schema_registry_url}: {reason}. "
                            f"Log {procs.log_file(NAME)} ends with:\n{procs.tail(NAME)}")
    previous = ensure_compatibility(settings)
    if previous is not None:
        say(f"global compatibility {previous} -> {COMPATIBILITY}")
    return info


def stop(settings: Settings, timeout: float = STOP_TIMEOUT_S) -> bool:
    """SIGTERM (Quarkus shuts down and H2 closes its file in ~1 s), SIGKILL after
    ``timeout``. True if it was running."""
    return Processes(settings.run_dir, settings.log_dir).stop(NAME, timeout)
