"""A single-node Apache Kafka broker (combined KRaft broker + controller) on loopback.

The broker runs from the jars of ``org.apache.kafka:kafka_2.13`` that Maven lays into a
cache outside the repository (``~/.cache/clawstream/kafka-<version>/libs``): the machine
reaches Maven Central but not Kafka's download site, and a cache outside the state dir
survives ``down --purge`` so a fresh stack costs no second download.

Readiness is an admin call (list topics) answering, not an open port: the port opens before
the broker has registered with its controller and can serve metadata.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from clawstream.config import Settings
from clawstream.deploy.local.errors import NotReadyError, StackError
from clawstream.deploy.local.maven import cache_root, copy_command, fetch_libs
from clawstream.deploy.local.ports import ensure_ports_free
from clawstream.deploy.local.process import Processes, ProcessInfo
from clawstream.deploy.local.tools import require_java
from clawstream.deploy.local.wait import wait_for

NAME = "kafka"
POM = Path(__file__).resolve().parent.parent / "kafka" / "pom.xml"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


def libs_dir(version: str) -> Path:
    """Where the jars of Kafka ``version`` live once fetched."""
    return cache_root() / f"kafka-{version}" / "libs"


def _jar(version: str) -> str:
    return f"kafka_2.13-{version}.jar"


def jars_present(version: str) -> bool:
    """True if the cache holds a complete jar set (the folder appears only when complete)."""
    return (libs_dir(version) / _jar(version)).is_file()


def maven_command(mvn: str, version: str, out_dir: Path) -> list[str]:
    return copy_command(mvn, POM, {"kafka.version": version, "kafka.libs.dir": str(out_dir)})


def ensure_jars(version: str, *, timeout: float = 900.0) -> Path:
    """Fetch the broker's jars with Maven unless cached; return the libs folder."""
    return fetch_libs(POM, libs_dir(version), _jar(version), {"kafka.version": version},
                      "kafka.libs.dir", f"org.apache.kafka:kafka_2.13:{version}",
                      timeout=timeout)


def kafka_dir(settings: Settings) -> Path:
    return settings.state_dir / "kafka"


def data_dir(settings: Settings) -> Path:
    return kafka_dir(settings) / "data"


def properties_file(settings: Settings) -> Path:
    return kafka_dir(settings) / "server.properties"


def _major(version: str) -> int:
    try:
        return int(version.split(".", 1)[0])
    except ValueError:
        return 0


def server_properties(settings: Settings) -> dict[str, str]:
    """The broker's configuration: one combined KRaft node, everything on 127.0.0.1.

    Replication factors are 1 (there is one broker); the first consumer group does not wait
    3 s for more members (group.initial.rebalance.delay.ms=0); topics are not auto-created,
    because the topic catalogue in ``streams`` creates every topic with its partitions and
    configs, and a typo should fail loudly rather than create a one-partition topic.
    """
    port, ctrl = settings.kafka_port, settings.kafka_controller_port
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{ctrl}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{ctrl}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data_dir(settings)),
        "num.partitions": str(settings.partitions),
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        # 50 partitions (the default) for one broker only slows the first group join.
        "offsets.topic.num.partitions": "8",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "4",
        "group.initial.rebalance.delay.ms": "0",
        # After a crash (SIGKILL) the controller refuses the restarted broker's registration
        # until the old incarnation's session expires: 9 s by default plus retry backoff made
        # a crash-restart take ~14 s. Loopback heartbeats do not need that much slack.
        "broker.session.timeout.ms": "3000",
        "broker.heartbeat.interval.ms": "500",
        "auto.create.topics.enable": "false",
        "delete.topic.enable": "true",
        # The cleaner (compacted changelogs, control flags) allocates this buffer up front;
        # 128 MiB (the default) is a sixth of the heap for nothing on a dev machine.
        "log.cleaner.dedupe.buffer.size": str(32 * 1024 * 1024),
        "num.network.threads": "2",
        "num.io.threads": "4",
        # One limit for every record (validation keeps requests and states under it).
        "message.max.bytes": str(settings.kafka_max_message_bytes),
        "replica.fetch.max.bytes": str(settings.kafka_max_message_bytes),
    }
    if _major(settings.kafka_version) >= 4:
        props["share.coordinator.state.topic.replication.factor"] = "1"
        props["share.coordinator.state.topic.min.isr"] = "1"
    return props


def render_properties(props: dict[str, str]) -> str:
    lines = ["# Written by deploy.local.kafka on every start; edit settings, not this file."]
    lines += [f"{key}={value}" for key, value in props.items()]
    return "\n".join(lines) + "\n"


def write_properties(settings: Settings) -> Path:
    path = properties_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_properties(server_properties(settings)))
    return path


def _java_cmd(java: str, libs: Path, heap: str, main: str, *args: str) -> list[str]:
    return [
        java,
        f"-Xmx{heap}",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        "-Dorg.slf4j.simpleLogger.showDateTime=true",
        "-Dorg.slf4j.simpleLogger.dateTimeFormat=yyyy-MM-dd'T'HH:mm:ss.SSS",
        "-cp",
        f"{libs}/*",
        main,
        *args,
    ]


def broker_command(settings: Settings, java: str, libs: Path) -> list[str]:
    return _java_cmd(java, libs, settings.kafka_heap, "kafka.Kafka", str(properties_file(settings)))


def format_storage(settings: Settings, java: str, libs: Path) -> bool:
    """Format the KRaft log dir once (``StorageTool random-uuid`` + ``format``).

    Returns False if it was formatted already. A static quorum
    (``controller.quorum.voters``) is formatted without ``--standalone``.
    """
    if (data_dir(settings) / "meta.properties").is_file():
        return False
    tool = "kafka.tools.StorageTool"
    uuid = _run_tool(_java_cmd(java, libs, "256m", tool, "random-uuid")).strip().splitlines()
    if not uuid:
        raise StackError("kafka.tools.StorageTool random-uuid printed nothing")
    _run_tool(
        _java_cmd(
            java,
            libs,
            "256m",
            tool,
            "format",
            "--ignore-formatted",
            "-t",
            uuid[-1].strip(),
            "-c",
            str(properties_file(settings)),
        )
    )
    return True


def _run_tool(cmd: list[str]) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise StackError(
            f"{' '.join(cmd[-6:])} failed (exit {result.returncode}):\n"
            + "\n".join((result.stdout + result.stderr).splitlines()[-30:])
        )
    return result.stdout


def is_ready(settings: Settings, timeout: float = 2.0) -> bool:
    """True if the broker answers a metadata (list topics) request within ``timeout``."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers, "log_level": 0})
    try:
        admin.list_topics(timeout=timeout)
    except Exception:
        return False
    return True


def start(
    settings: Settings,
    *,
    timeout: float = READY_TIMEOUT_S,
    note: Callable[[str], None] | None = None,
) -> ProcessInfo:
    """Fetch jars if needed, write config, format once, start the broker, wait until ready.

    Idempotent: a running broker is only probed for readiness.
    """
    say = note or (lambda _msg: None)
    procs = Processes(settings.run_dir, settings.log_dir)
    info = procs.info(NAME)
    if info is None:
        procs.reclaim(NAME)  # leftovers of a crash may hold our ports
        java = require_java()
        if not jars_present(settings.kafka_version):
            say(f"fetching Kafka {settings.kafka_version} jars from Maven Central")
        libs = ensure_jars(settings.kafka_version)
        ensure_ports_free(
            {
                "kafka_port": settings.kafka_port,
                "kafka_controller_port": settings.kafka_controller_port,
            },
            component=NAME,
        )
        write_properties(settings)
        if format_storage(settings, java, libs):
            say(f"formatted KRaft storage in {data_dir(settings)}")
        info = procs.start(NAME, broker_command(settings, java, libs))
    wait_ready(settings, procs, timeout)
    return info


def wait_ready(settings: Settings, procs: Processes, timeout: float) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers, "log_level": 0})

    def answers() -> bool:
        admin.list_topics(timeout=1.0)
        return True

    def died() -> str | None:
        return None if procs.is_running(NAME) else "the broker process exited"

    reason = wait_for(answers, timeout=timeout, interval=0.3, abort=died)
    if reason is not None:
        raise NotReadyError(
            f"kafka on {settings.bootstrap_servers}: {reason}. "
            f"Log {procs.log_file(NAME)} ends with:\n{procs.tail(NAME)}"
        )


def stop(settings: Settings, timeout: float = STOP_TIMEOUT_S) -> bool:
    """Controlled shutdown (SIGTERM), SIGKILL after ``timeout``. True if it was running."""
    return Processes(settings.run_dir, settings.log_dir).stop(NAME, timeout)


def purge(settings: Settings) -> None:
    """Delete the broker's data and config (not the jar cache). Stop it first."""
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(kafka_dir(settings))
