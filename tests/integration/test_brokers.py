"""A 3-node KRaft cluster (``up --brokers 3``) losing a broker under load: nothing lost,
nothing doubled, every side effect once, and the broker rejoins every ISR.

Its own stack (ports, state dir) beside the session's one-broker test stack: three
brokers, Redis and two supervised workers, no model (the load is the mutating tool of
``fixtures.faults``, whose effects are counted in Redis).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from benchmarks import faultload
from clawstream.config import Settings
from clawstream.deploy.local import kafka, status
from clawstream.deploy.local.process import Processes
from clawstream.deploy.local.wait import wait_for
from clawstream.streams.kafka_access import client_config
from clawstream.streams.topics import CATALOGUE, REQUESTS_INTERACTIVE
from tests.integration.flow import side_stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster() -> Iterator[Settings]:
    with side_stack("brokers", 12, kafka_brokers=3, worker_count=2,
                    with_inference=False) as settings:
        yield settings


def _isr_sizes(settings: Settings) -> dict[tuple[str, int], int]:
    """(topic, partition) -> ISR size, over the catalogue's topics."""
    topics = AdminClient(client_config(settings.bootstrap_servers)).list_topics(
        timeout=10).topics
    return {(spec.name, p): len(meta.isrs)
            for spec in CATALOGUE for p, meta in topics[spec.name].partitions.items()}


def test_topics_are_replicated_three_times_with_two_in_sync(cluster: Settings) -> None:
    admin = AdminClient(client_config(cluster.bootstrap_servers))
    meta = admin.list_topics(timeout=10)
    assert set(meta.brokers) == {1, 2, 3}
    assert set(_isr_sizes(cluster).values()) == {3}
    replicas = {len(p.replicas) for p in meta.topics[REQUESTS_INTERACTIVE.name]
                .partitions.values()}
    assert replicas == {3}
    res = ConfigResource(ResourceType.TOPIC, REQUESTS_INTERACTIVE.name)
    config = admin.describe_configs([res])[res].result()
    assert config["min.insync.replicas"].value == "2"
    groups = meta.topics["__consumer_offsets"].partitions.values()
    assert {len(p.replicas) for p in groups} == {3}


def test_a_broker_killed_under_load_loses_and_doubles_nothing(cluster: Settings) -> None:
    sent: list[faultload.Record] = []
    stop = threading.Event()
    unacked: list[int] = []
    loader = threading.Thread(target=lambda: unacked.append(faultload.load(
        cluster.bootstrap_servers, 4.0, stop, sent, prefix="brokers",
        agents=("fault-effect",))))
    loader.start()
    try:
        # Under load: requests in flight and answered before the kill.
        assert wait_for(lambda: len(sent) >= 20, timeout=30, interval=0.2) is None
        procs = Processes(cluster.run_dir, cluster.log_dir)
        assert procs.kill(kafka.node_name(1))  # SIGKILL the bootstrap broker
        assert wait_for(lambda: not kafka.is_ready(cluster, 1.0, node=1), timeout=10,
                        interval=0.2) is None
        killed_at = len(sent)
        # Fenced: the controller takes it out of every ISR it was in.
        assert wait_for(lambda: min(_isr_sizes(cluster).values()) == 2, timeout=30,
                        interval=0.5) is None
        assert _brokers_running(cluster) == {"kafka": False, "kafka-2": True, "kafka-3": True}
        # The load goes on against the two that are left.
        assert wait_for(lambda: len(sent) >= killed_at + 20, timeout=30, interval=0.2) is None
        kafka.start_node(cluster, 1)
        restarted_at = len(sent)
        assert wait_for(lambda: len(sent) >= restarted_at + 12, timeout=30,
                        interval=0.2) is None
    finally:
        stop.set()
        loader.join()
    assert unacked == [0]
    answers = faultload.collect_answers(cluster, sent)
    effects = faultload.count_effects(cluster, sent)
    counts = faultload.integrity(sent, answers, effects)
    assert counts == {"requests lost (must be 0)": 0, "answers doubled (must be 0)": 0,
                      "duplicate effects (must be 0)": 0, "missing effects": 0}
    assert len(answers) == len(sent) and all(len(v) == 1 for v in answers.values())
    assert {v[0]["status"] for v in answers.values()} == {"ok"}
    # The broker rejoins: it is listed again and back in every ISR.
    assert wait_for(lambda: set(_isr_sizes(cluster).values()) == {3}, timeout=90,
                    interval=1.0) is None
    assert _brokers_running(cluster) == {"kafka": True, "kafka-2": True, "kafka-3": True}


def _brokers_running(settings: Settings) -> dict[str, bool]:
    return {row.name: row.running for row in status(settings) if row.name.startswith("kafka")}
