"""Apache Kafka on loopback: one KRaft node (combined broker + controller) by default, or a
cluster of ``kafka_brokers`` such nodes, each with its own ports and dirs.

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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from clawstream.config import Settings
from clawstream.deploy.local import credentials
from clawstream.deploy.local.errors import NotReadyError, StackError
from clawstream.deploy.local.maven import cache_root, copy_command, fetch_libs
from clawstream.deploy.local.ports import ensure_ports_free
from clawstream.deploy.local.process import Processes, ProcessInfo
from clawstream.deploy.local.tools import require_java
from clawstream.deploy.local.wait import wait_for
from clawstream.streams.kafka_access import client_config

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


def node_name(node: int) -> str:
    """Process name of KRaft node ``node``: node 1 is ``kafka`` (the one-broker stack's name),
    the others ``kafka-2``, ``kafka-3`` ..."""
    return NAME if node == 1 else f"{NAME}-{node}"


def node_of(name: str) -> int | None:
    """The node id of a process name of ours, None for other names."""
    if name == NAME:
        return 1
    suffix = name.removeprefix(f"{NAME}-")
    return int(suffix) if name.startswith(f"{NAME}-") and suffix.isdigit() else None


def kafka_dir(settings: Settings, node: int = 1) -> Path:
    return settings.state_dir / node_name(node)


def data_dir(settings: Settings, node: int = 1) -> Path:
    return kafka_dir(settings, node) / "data"


def properties_file(settings: Settings, node: int = 1) -> Path:
    return kafka_dir(settings, node) / "server.properties"


def _major(version: str) -> int:
    try:
        return int(version.split(".", 1)[0])
    except ValueError:
        return 0


def server_properties(settings: Settings, node: int = 1) -> dict[str, str]:
    """The configuration of KRaft node ``node``: a combined broker + controller, everything
    on 127.0.0.1. The one place where broker configuration is made.

    With ``kafka_brokers`` nodes every node is a voter of the controller quorum (three
    survive one loss). Internal topics (offsets, transactions) get the same replication as
    ours, ``settings.topic_replication_factor``, and min.insync.replicas
    ``settings.min_insync_replicas``. The first consumer group does not wait 3 s for more
    members (group.initial.rebalance.delay.ms=0); topics are not auto-created, because the
    topic catalogue in ``streams`` creates every topic with its partitions and configs, and
    a typo should fail loudly rather than create a one-partition topic.
    """
    port = settings.kafka_node_port(node)
    ctrl = settings.kafka_node_controller_port(node)
    voters = ",".join(f"{n}@127.0.0.1:{settings.kafka_node_controller_port(n)}"
                      for n in settings.kafka_nodes)
    replicas = str(settings.topic_replication_factor)
    min_isr = str(settings.min_insync_replicas)
    protocol = "SASL_PLAINTEXT" if settings.auth else "PLAINTEXT"
    props = {
        "process.roles": "broker,controller",
        "node.id": str(node),
        "controller.quorum.voters": voters,
        "listeners": f"CLIENT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{ctrl}",
        "advertised.listeners": f"CLIENT://127.0.0.1:{port}",
        "inter.broker.listener.name": "CLIENT",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": f"CLIENT:{protocol},CONTROLLER:{protocol}",
        "log.dirs": str(data_dir(settings, node)),
        "num.partitions": str(settings.partitions),
        "default.replication.factor": replicas,
        "min.insync.replicas": min_isr,
        "offsets.topic.replication.factor": replicas,
        # 50 partitions (the default) for one broker only slows the first group join.
        "offsets.topic.num.partitions": "8",
        "transaction.state.log.replication.factor": replicas,
        "transaction.state.log.min.isr": min_isr,
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
    if settings.kafka_brokers > 1:
        # A follower that was down (SIGKILL) is out of the ISR; it rejoins once it has
        # caught up. Loopback followers fall behind only when dead: 10 s, not 30 s.
        props["replica.lag.time.max.ms"] = "10000"
    if settings.auth:
        props.update(credentials.broker_auth_properties(settings, "CLIENT", "CONTROLLER"))
    if _major(settings.kafka_version) >= 4:
        props["share.coordinator.state.topic.replication.factor"] = replicas
        props["share.coordinator.state.topic.min.isr"] = min_isr
    return props


def render_properties(props: dict[str, str]) -> str:
    lines = ["# Written by deploy.local.kafka on every start; edit settings, not this file."]
    lines += [f"{key}={value}" for key, value in props.items()]
    return "\n".join(lines) + "\n"


def write_properties(settings: Settings, node: int = 1) -> Path:
    """Readable by the owner only: it holds the admin's login."""
    path = properties_file(settings, node)
    credentials.write_private(path, render_properties(server_properties(settings, node)))
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


def broker_command(settings: Settings, java: str, libs: Path, node: int = 1) -> list[str]:
    return _java_cmd(java, libs, settings.kafka_heap, "kafka.Kafka",
                     str(properties_file(settings, node)))


def cluster_id_file(settings: Settings) -> Path:
    """Where the cluster id lives: every node of one cluster is formatted with it."""
    return kafka_dir(settings, 1) / "cluster.id"


def _cluster_id(settings: Settings, java: str, libs: Path) -> str:
    path = cluster_id_file(settings)
    if path.is_file():
        return path.read_text().strip()
    out = _run_tool(_java_cmd(java, libs, "256m", "kafka.tools.StorageTool", "random-uuid"))
    lines = out.strip().splitlines()
    if not lines:
        raise StackError("kafka.tools.StorageTool random-uuid printed nothing")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(lines[-1].strip() + "\n")
    return lines[-1].strip()


def format_storage(settings: Settings, java: str, libs: Path, node: int = 1) -> bool:
    """Format node ``node``'s KRaft log dir once, with the cluster's one id.

    Returns False if it was formatted already. A static quorum
    (``controller.quorum.voters``) is formatted without ``--standalone``.
    """
    if (data_dir(settings, node) / "meta.properties").is_file():
        return False
    _run_tool(
        _java_cmd(
            java,
            libs,
            "256m",
            "kafka.tools.StorageTool",
            "format",
            "--ignore-formatted",
            "-t",
            _cluster_id(settings, java, libs),
            "-c",
            str(properties_file(settings, node)),
            *(credentials.format_scram_args(settings) if settings.auth else []),
        )
    )
    return True


def _run_tool(cmd: list[str]) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        shown = ["--add-scram ..." if a.startswith("SCRAM-") else a for a in cmd[-6:]]
        raise StackError(
            f"{' '.join(shown)} failed (exit {result.returncode}):\n"
            + "\n".join((result.stdout + result.stderr).splitlines()[-30:])
        )
    return result.stdout


def live_brokers(bootstrap: str, timeout: float = 2.0) -> set[int] | None:
    """The node ids of the brokers the cluster's metadata lists (registered, not fenced),
    or None if no broker of ``bootstrap`` answers within ``timeout``."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(client_config(bootstrap, log_level=0))
    try:
        return set(admin.list_topics(timeout=timeout).brokers)
    except Exception:
        return None


def is_ready(settings: Settings, timeout: float = 2.0, node: int | None = None) -> bool:
    """True if the cluster answers a metadata (list topics) request within ``timeout``;
    with ``node``, if that broker answers it and the metadata lists it."""
    if node is None:
        return live_brokers(settings.bootstrap_servers, timeout) is not None
    live = live_brokers(f"127.0.0.1:{settings.kafka_node_port(node)}", timeout)
    return live is not None and node in live


def start(
    settings: Settings,
    *,
    timeout: float = READY_TIMEOUT_S,
    note: Callable[[str], None] | None = None,
) -> ProcessInfo:
    """Fetch jars if needed, write config, format once, start every node that is not
    running, and wait until all of them are registered; returns node 1's process.

    Idempotent: running nodes are only probed for readiness. Nodes start together (a
    quorum of several nodes elects no controller until most of its voters run).
    """
    say = note or (lambda _msg: None)
    procs = Processes(settings.run_dir, settings.log_dir)
    infos: dict[int, ProcessInfo] = {}
    missing = []
    for node in settings.kafka_nodes:
        info = procs.info(node_name(node))
        if info is None:
            missing.append(node)
        else:
            infos[node] = info
    if missing:
        java = require_java()
        if not jars_present(settings.kafka_version):
            say(f"fetching Kafka {settings.kafka_version} jars from Maven Central")
        libs = ensure_jars(settings.kafka_version)
        for node in missing:
            procs.reclaim(node_name(node))  # leftovers of a crash may hold our ports
            ensure_ports_free(
                {
                    "kafka_port": settings.kafka_node_port(node),
                    "kafka_controller_port": settings.kafka_node_controller_port(node),
                },
                component=node_name(node),
            )
            write_properties(settings, node)
            if format_storage(settings, java, libs, node):
                say(f"formatted KRaft storage in {data_dir(settings, node)}")
        for node in missing:
            infos[node] = procs.start(node_name(node), broker_command(settings, java, libs, node))
    for node in settings.kafka_nodes:
        wait_ready(settings, procs, timeout, node)
    return infos[1]


def start_node(settings: Settings, node: int, timeout: float = READY_TIMEOUT_S) -> ProcessInfo:
    """Start one node of the cluster again (after a crash) and wait until it is registered;
    the others keep running."""
    procs = Processes(settings.run_dir, settings.log_dir)
    info = procs.info(node_name(node))
    if info is None:
        procs.reclaim(node_name(node))
        java = require_java()
        libs = ensure_jars(settings.kafka_version)
        write_properties(settings, node)
        format_storage(settings, java, libs, node)
        info = procs.start(node_name(node), broker_command(settings, java, libs, node))
    wait_ready(settings, procs, timeout, node)
    return info


def wait_ready(settings: Settings, procs: Processes, timeout: float, node: int = 1) -> None:
    name = node_name(node)
    address = f"127.0.0.1:{settings.kafka_node_port(node)}"

    def answers() -> bool:
        return is_ready(settings, 1.0, node)

    def died() -> str | None:
        return None if procs.is_running(name) else "the broker process exited"

    reason = wait_for(answers, timeout=timeout, interval=0.3, abort=died)
    if reason is not None:
        raise NotReadyError(
            f"kafka node {node} on {address}: {reason}. "
            f"Log {procs.log_file(name)} ends with:\n{procs.tail(name)}"
        )


def running_nodes(settings: Settings) -> list[int]:
    """The node ids with a live process (configured or left from a larger cluster)."""
    procs = Processes(settings.run_dir, settings.log_dir)
    nodes = (node_of(n) for n in procs.names())
    return sorted(n for n in nodes if n is not None and procs.is_running(node_name(n)))


def stop(settings: Settings, timeout: float = STOP_TIMEOUT_S) -> bool:
    """Controlled shutdown (SIGTERM) of every node, SIGKILL after ``timeout``. True if one
    was running. The brokers stop before the controllers' quorum is lost: all at once, so
    none waits for a leader that has already gone."""
    procs = Processes(settings.run_dir, settings.log_dir)
    names = {node_name(n) for n in settings.kafka_nodes} | {
        node_name(n) for n in running_nodes(settings)}
    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        return any(list(pool.map(lambda name: procs.stop(name, timeout), sorted(names))))


def purge(settings: Settings) -> None:
    """Delete every node's data and config (not the jar cache). Stop them first."""
    for node in settings.kafka_nodes:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(kafka_dir(settings, node))
