"""Kafka broker config, jar cache and tool checks (no broker started here)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from clawstream.config import Settings
from clawstream.deploy.local import kafka
from clawstream.deploy.local.errors import MissingToolError, NotReadyError
from clawstream.deploy.local.process import Processes
from clawstream.deploy.local.tools import parse_java_major


def _parse(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and line[0] != "#")
    return {key: value for key, value in pairs}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(state_dir=tmp_path, kafka_port=39192, kafka_controller_port=39193)


def test_single_combined_kraft_node_on_loopback(settings: Settings) -> None:
    props = kafka.server_properties(settings)
    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == "1"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:39193"
    assert props["listeners"] == "CLIENT://127.0.0.1:39192,CONTROLLER://127.0.0.1:39193"
    assert props["advertised.listeners"] == "CLIENT://127.0.0.1:39192"
    assert props["controller.listener.names"] == "CONTROLLER"
    assert props["listener.security.protocol.map"] == "CLIENT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    assert "authorizer.class.name" not in props  # auth off (the unit tests' default)
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["auto.create.topics.enable"] == "false"
    assert Path(props["log.dirs"]).is_relative_to(settings.state_dir)


def test_with_auth_every_listener_asks_for_a_login_and_acls_decide(
        settings: Settings) -> None:
    from clawstream.deploy.local import credentials

    authed = settings.model_copy(update={"auth": True})
    admin = credentials.ensure(authed)["admin"].kafka
    props = kafka.server_properties(authed)
    assert props["listener.security.protocol.map"] == (
        "CLIENT:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT")
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512,SCRAM-SHA-256"
    assert props["sasl.mechanism.inter.broker.protocol"] == "SCRAM-SHA-512"
    assert props["sasl.mechanism.controller.protocol"] == "PLAIN"
    assert props["authorizer.class.name"].endswith("StandardAuthorizer")
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["super.users"] == "User:admin"
    assert f'password="{admin.password}"' in props[
        "listener.name.client.scram-sha-512.sasl.jaas.config"]
    path = kafka.write_properties(authed)
    assert path.stat().st_mode & 0o777 == 0o600  # it holds the admin's login
    for role in ("admin", "worker", "gateway", "analyst"):
        secret = credentials.path_of(authed, role)
        assert secret.stat().st_mode & 0o777 == 0o600
        assert secret.parent.stat().st_mode & 0o777 == 0o700
    assert credentials.ensure(authed)["admin"].kafka == admin  # written once, then kept
    assert len({c.kafka.password for c in credentials.ensure(authed).values()}) == 8


def test_replication_factors_are_one(settings: Settings) -> None:
    props = kafka.server_properties(settings)
    for key in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
        "default.replication.factor",
    ):
        assert props[key] == "1", key
    assert not any(key.startswith("share.") for key in props)  # 3.9 does not know them


def test_kafka_4_gets_share_coordinator_settings(tmp_path: Path) -> None:
    props = kafka.server_properties(Settings(state_dir=tmp_path, kafka_version="4.1.0"))
    assert props["share.coordinator.state.topic.replication.factor"] == "1"
    assert props["share.coordinator.state.topic.min.isr"] == "1"


def test_properties_file_round_trips(settings: Settings) -> None:
    path = kafka.write_properties(settings)
    assert path.parent == settings.state_dir / "kafka"
    assert _parse(path.read_text()) == kafka.server_properties(settings)


def test_broker_command(settings: Settings) -> None:
    cmd = kafka.broker_command(settings, "/usr/bin/java", Path("/cache/libs"))
    assert cmd[0] == "/usr/bin/java"
    assert f"-Xmx{settings.kafka_heap}" in cmd
    assert cmd[cmd.index("-cp") + 1] == "/cache/libs/*"
    assert cmd[-2:] == ["kafka.Kafka", str(kafka.properties_file(settings))]


def test_jar_cache_lives_outside_the_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert kafka.libs_dir("3.9.1") == tmp_path / "xdg" / "clawstream" / "kafka-3.9.1" / "libs"
    assert not kafka.jars_present("3.9.1")
    kafka.libs_dir("3.9.1").mkdir(parents=True)
    (kafka.libs_dir("3.9.1") / "kafka_2.13-3.9.1.jar").write_bytes(b"")
    assert kafka.jars_present("3.9.1")
    assert kafka.ensure_jars("3.9.1") == kafka.libs_dir("3.9.1")  # cached: no maven run


def test_maven_command_and_pom() -> None:
    cmd = kafka.maven_command("mvn", "3.9.1", Path("/out"))
    assert cmd[:3] == ["mvn", "-q", "-B"]
    assert "-Dkafka.version=3.9.1" in cmd
    assert "-Dkafka.libs.dir=/out" in cmd
    assert cmd[-1] == "dependency:copy-dependencies"
    pom = kafka.POM.read_text()
    assert "<artifactId>maven-dependency-plugin</artifactId>" in pom
    assert "<version>3.8.1</version>" in pom
    assert "<includeScope>runtime</includeScope>" in pom
    assert "<artifactId>kafka_2.13</artifactId>" in pom
    assert "<kafka.version>3.9.1</kafka.version>" in pom


def test_missing_maven_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(MissingToolError, match="apt-get install -y maven"):
        kafka.ensure_jars("3.9.1")


@pytest.mark.parametrize(
    ("output", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('java version "1.8.0_392"', 8),
        ('openjdk version "21" 2023-09-19', 21),
        ("garbage", None),
    ],
)
def test_java_version_parsing(output: str, major: int | None) -> None:
    assert parse_java_major(output) == major


def test_readiness_fails_fast_when_the_broker_is_not_running(settings: Settings) -> None:
    procs = Processes(settings.run_dir, settings.log_dir)
    t = time.monotonic()
    with pytest.raises(NotReadyError, match="exited"):
        kafka.wait_ready(settings, procs, timeout=30.0)
    assert time.monotonic() - t < 5.0


def test_three_nodes_form_one_quorum_with_their_own_ports_and_dirs(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, kafka_brokers=3, kafka_port=39192,
                        kafka_controller_port=39193)
    props = [kafka.server_properties(settings, node) for node in (1, 2, 3)]
    voters = "1@127.0.0.1:39193,2@127.0.0.1:39203,3@127.0.0.1:39213"
    assert {p["controller.quorum.voters"] for p in props} == {voters}
    assert [p["node.id"] for p in props] == ["1", "2", "3"]
    assert [p["advertised.listeners"] for p in props] == [
        f"CLIENT://127.0.0.1:{port}" for port in (39192, 39202, 39212)]
    assert len({p["log.dirs"] for p in props}) == 3
    assert kafka.data_dir(settings, 2) == tmp_path / "kafka-2" / "data"
    for p in props:
        assert p["default.replication.factor"] == p["offsets.topic.replication.factor"] == "3"
        assert p["min.insync.replicas"] == p["transaction.state.log.min.isr"] == "2"
    assert settings.bootstrap_servers == "127.0.0.1:39192,127.0.0.1:39202,127.0.0.1:39212"


def test_two_brokers_replicate_twice_and_keep_one_in_sync(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, kafka_brokers=2)
    assert (settings.topic_replication_factor, settings.min_insync_replicas) == (2, 1)
    many = Settings(state_dir=tmp_path, kafka_brokers=5)
    assert (many.topic_replication_factor, many.min_insync_replicas) == (3, 2)


@pytest.mark.parametrize(("name", "node"), [("kafka", 1), ("kafka-3", 3), ("kafka-x", None),
                                            ("worker-1", None)])
def test_node_names_round_trip(name: str, node: int | None) -> None:
    assert kafka.node_of(name) == node
    if node is not None:
        assert kafka.node_name(node) == name
