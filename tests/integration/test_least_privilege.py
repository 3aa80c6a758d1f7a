"""Least privilege on the real broker and Redis (issue 18): each role does its job and is
refused outside it, anonymous and wrong logins are refused with a clear reason, the worker
split into its three parts answers with each part's own login, and a credential roll under
load fails no request."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from clawstream.config import Credentials, Settings
from clawstream.deploy.local import credentials
from clawstream.deploy.local import worker as worker_proc
from clawstream.deploy.local.env import child_env
from clawstream.deploy.local.process import Processes
from clawstream.deploy.local.rotation import rotate
from clawstream.processors.app import WORKER_PARTS, worker_app_id
from clawstream.processors.main import LOGIN_REFUSED_EXIT
from clawstream.streams.admin import LoginRefused, broker_answers
from clawstream.streams.topics import (
    ANSWERS,
    CONTROL_FLAGS,
    DELTAS,
    EVENTS,
    INFERENCE_REQUESTS,
    INFERENCE_REQUESTS_BATCH,
    REQUESTS_INTERACTIVE,
    RESULTS,
    TOOL_REQUESTS,
)
from tests.integration.flow import answer_to, ask, script, script_marker, send

pytestmark = pytest.mark.integration


def kafka_login(stack: Settings, role: str, **extra: Any) -> dict[str, Any]:
    return {"bootstrap.servers": stack.bootstrap_servers,
            **credentials.as_role(stack, role).kafka_security(), **extra}


def produce_error(stack: Settings, role: str, topic: str) -> int | None:
    """The error code the broker answers ``role``'s write to ``topic`` with (None: taken).
    Only refused writes are tried on live topics: a taken one would feed the workers."""
    outcome: list[KafkaError | None] = []
    producer = Producer(kafka_login(stack, role, **{"message.timeout.ms": 20000}))
    producer.produce(topic, key=b"lp-probe", value=b"not a record",
                     on_delivery=lambda err, _msg: outcome.append(err))
    producer.flush(30)
    assert outcome, f"{role}'s write to {topic} got no delivery report"
    return None if outcome[0] is None else outcome[0].code()


def read_error(stack: Settings, role: str, topic: str) -> int | None:
    """None if ``role`` may fetch ``topic`` (it reaches the partition's end), else the
    broker's error code."""
    group = (worker_app_id(stack.app_id, (role,)) if role in ("tools", "inference")
             else f"clawstream-reader-lp-{uuid.uuid4().hex[:8]}")  # a group it may use
    consumer = Consumer(kafka_login(stack, role, **{
        "group.id": group,
        "enable.auto.commit": False, "enable.partition.eof": True}))
    try:
        _low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10,
                                                    cached=False)
        consumer.assign([TopicPartition(topic, 0, high)])
        while True:
            message = consumer.poll(15)
            assert message is not None, f"no answer to {role}'s fetch of {topic}"
            error = message.error()
            if error is None or error.code() == KafkaError._PARTITION_EOF:
                return None
            return int(error.code())
    except Exception as exc:  # the offsets request itself refused
        code = exc.args[0].code() if exc.args and isinstance(exc.args[0], KafkaError) else None
        assert code is not None, exc
        return int(code)
    finally:
        consumer.close()


REFUSED = KafkaError.TOPIC_AUTHORIZATION_FAILED
HIDDEN = {REFUSED, KafkaError._UNKNOWN_PARTITION, KafkaError.UNKNOWN_TOPIC_OR_PART}
"""A topic a role may not even describe is refused, or absent from what it may see."""


@pytest.mark.parametrize(("role", "topic"), [
    ("tools", ANSWERS.name), ("tools", REQUESTS_INTERACTIVE.name), ("tools", CONTROL_FLAGS.name),
    ("inference", ANSWERS.name), ("inference", TOOL_REQUESTS.name),
    ("coordinator", DELTAS.name),
    ("gateway", TOOL_REQUESTS.name), ("gateway", ANSWERS.name), ("gateway", CONTROL_FLAGS.name),
    ("analyst", EVENTS.name), ("analyst", REQUESTS_INTERACTIVE.name),
    ("operator", ANSWERS.name),
])
def test_a_role_cannot_write_outside_its_grants(stack: Settings, role: str, topic: str) -> None:
    assert produce_error(stack, role, topic) == REFUSED


@pytest.mark.parametrize(("role", "topic", "allowed"), [
    ("tools", TOOL_REQUESTS.name, True), ("tools", REQUESTS_INTERACTIVE.name, False),
    ("tools", ANSWERS.name, False),
    ("inference", INFERENCE_REQUESTS_BATCH.name, True), ("inference", TOOL_REQUESTS.name, False),
    ("coordinator", REQUESTS_INTERACTIVE.name, True), ("coordinator", TOOL_REQUESTS.name, False),
    ("gateway", ANSWERS.name, True), ("gateway", RESULTS.name, False),
    ("analyst", EVENTS.name, True), ("analyst", INFERENCE_REQUESTS.name, True),
    ("analyst", CONTROL_FLAGS.name, False),
    ("operator", RESULTS.name, True),
])
def test_a_role_reads_only_what_it_is_granted(stack: Settings, role: str, topic: str,
                                              allowed: bool) -> None:
    error = read_error(stack, role, topic)
    if allowed:
        assert error is None
    else:
        assert error in HIDDEN


def redis_as(stack: Settings, role: str) -> redis.Redis:
    return redis.Redis.from_url(credentials.as_role(stack, role).redis_url,
                                decode_responses=True)


@pytest.mark.parametrize(("role", "key", "allowed"), [
    ("worker", "ledger:lp-probe", True), ("worker", "pc:lp-probe", True),
    ("worker", "tool:lp-probe", True), ("worker", "clawstream:gw:apikey:lp-probe", False),
    ("tools", "ledger:lp-probe", True), ("tools", "pc:lp-probe", False),
    ("tools", "clawstream:bucket:pool:lp-probe", False),
    ("inference", "pc:lp-probe", True), ("inference", "ledger:lp-probe", False),
    ("coordinator", "clawstream:arrivals:user:lp-probe", True),
    ("coordinator", "ledger:lp-probe", False),
    ("gateway", "clawstream:gw:request:lp-probe", True), ("gateway", "ledger:lp-probe", False),
    ("gateway", "tc:lp-probe", False),
    ("operator", "clawstream:gw:apikey:lp-probe", True), ("operator", "ledger:lp-probe", False),
    ("analyst", "clawstream:gw:apikey:lp-probe", False),
])
def test_a_roles_redis_user_writes_only_its_keys(stack: Settings, role: str, key: str,
                                                 allowed: bool) -> None:
    client = redis_as(stack, role)
    try:
        if allowed:
            assert client.set(key, "1", ex=60)
            assert client.delete(key) == 1
        else:
            with pytest.raises(redis.exceptions.NoPermissionError):
                client.set(key, "1", ex=60)
    finally:
        client.close()


def test_no_role_but_the_admin_may_flush_or_reconfigure_redis(stack: Settings) -> None:
    client = redis_as(stack, "worker")
    try:
        for command in (("FLUSHALL",), ("CONFIG", "SET", "maxmemory", "1gb"), ("ACL", "LIST"),
                        ("KEYS", "*")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                client.execute_command(*command)
    finally:
        client.close()


def test_redis_refuses_anonymous_and_wrong_passwords(stack: Settings) -> None:
    anonymous = redis.Redis(port=stack.redis_port)
    with pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.ping()  # the default user is off
    anonymous.close()
    login = credentials.as_role(stack, "worker").credentials()
    assert login is not None
    wrong = redis.Redis(port=stack.redis_port, username=login.redis.username,
                        password=login.redis.password + "x")
    with pytest.raises(redis.exceptions.AuthenticationError):
        wrong.ping()
    wrong.close()


def login_file(tmp_path: Path, stack: Settings, role: str, *, kafka_password: str | None = None,
               redis_password: str | None = None) -> Path:
    real = credentials.as_role(stack, role).credentials()
    assert real is not None
    forged = Credentials(
        role=role,
        kafka=real.kafka.model_copy(update={"password": kafka_password or real.kafka.password}),
        redis=real.redis.model_copy(update={"password": redis_password or real.redis.password}))
    path = tmp_path / f"{role}.json"
    path.write_text(forged.model_dump_json())
    return path


def test_kafka_refuses_anonymous_and_wrong_logins_with_a_reason(
        stack: Settings, tmp_path: Path) -> None:
    from clawstream.streams import kafka_access

    anonymous = stack.model_copy(update={"auth": False, "kafka_port": stack.kafka_port})
    wrong = stack.model_copy(update={"role": "worker", "credentials_file": login_file(
        tmp_path, stack, "worker", kafka_password="not-the-password")})
    try:
        kafka_access.bind(anonymous)
        with pytest.raises(LoginRefused, match="has no login"):
            broker_answers(stack.bootstrap_servers, timeout_s=10)
        kafka_access.bind(wrong)
        with pytest.raises(LoginRefused, match="login of user 'worker' was refused"):
            broker_answers(stack.bootstrap_servers, timeout_s=10)
    finally:
        kafka_access.bind(stack)
    assert broker_answers(stack.bootstrap_servers, timeout_s=10)


@pytest.mark.parametrize(("wrong", "said"), [
    ("kafka", "Kafka at .* the login of user 'worker' was refused"),
    ("redis", "Redis at .* refused the login of user 'worker'"),
])
def test_a_worker_with_a_wrong_password_stops_and_says_why(
        stack: Settings, tmp_path: Path, wrong: str, said: str) -> None:
    import re

    path = login_file(tmp_path, stack, "worker",
                      **{f"{wrong}_password": "not-the-password"})
    env = child_env(stack, {"CLAWSTREAM_CREDENTIALS_FILE": str(path),
                            "CLAWSTREAM_WORKER_WEB_PORT": str(stack.worker_web_port + 40)},
                    role="worker")
    done = subprocess.run([*worker_proc.command("lp-wrong-login")], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == LOGIN_REFUSED_EXIT, done.stderr[-2000:]
    assert re.search(said, done.stderr), done.stderr[-2000:]
    assert "not-the-password" not in done.stderr  # nothing secret in the log


def commit_at_end(stack: Settings, group: str, topics: tuple[str, ...]) -> None:
    """Hand ``topics`` to ``group`` from now on: its committed offsets at their ends (a
    group that never ran would otherwise start at the beginning of the session's topics,
    and one that ran earlier would redo what the other group did meanwhile)."""
    consumer = Consumer(kafka_login(stack, "admin", **{"group.id": group,
                                                        "enable.auto.commit": False}))
    try:
        ends = []
        for topic in topics:
            partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            for p in partitions:
                _low, high = consumer.get_watermark_offsets(TopicPartition(topic, p),
                                                            timeout=10, cached=False)
                ends.append(TopicPartition(topic, p, high))
        consumer.commit(offsets=ends, asynchronous=False)
    finally:
        consumer.close()


@pytest.fixture
def split_worker(worker: Settings) -> Iterator[Settings]:
    """The session's worker stopped and its three parts run as three processes, each with
    its own role's login; the one worker back afterwards."""
    executor_topics = {"tools": (TOOL_REQUESTS.name,),
                       "inference": (INFERENCE_REQUESTS.name, INFERENCE_REQUESTS_BATCH.name)}
    worker_proc.stop_all(worker)
    procs = Processes(worker.run_dir, worker.log_dir)
    names = []
    try:
        for n, part in enumerate(WORKER_PARTS):
            if part in executor_topics:
                commit_at_end(worker, worker_app_id(worker.app_id, (part,)),
                              executor_topics[part])
            name = f"split-{part}"
            env = child_env(worker, {"CLAWSTREAM_WORKER_WEB_PORT":
                                     str(worker.worker_web_port + 50 + n)}, role=part)
            procs.start(name, worker_proc.command(name), env=env, cwd=Path.cwd())
            names.append(name)
        yield worker
    finally:
        for name in names:
            procs.stop(name, 30)
        for topics in executor_topics.values():
            commit_at_end(worker, worker.app_id, topics)
        worker_proc.start(worker, 0)


def test_the_worker_split_into_its_parts_answers_each_with_its_own_login(
        split_worker: Settings) -> None:
    marker, conversation = script_marker(), f"split-{uuid.uuid4().hex[:8]}"
    script(split_worker, marker, {"tool_calls": [{"name": "shout",
                                                  "arguments": {"text": "split"}}]},
           {"text": "shouted apart"})
    answer = answer_to(split_worker, send(split_worker, agent="team-helpdesk",
                                          conversation_id=conversation,
                                          text=f"shout {marker}"), timeout_s=180)
    assert (answer["status"], answer["text"]) == ("ok", "shouted apart")
    assert [e["step_type"] for e in answer["timeline"]] == ["model", "tool", "model"]
    # each step ran in the process of its part
    assert {e["step_type"]: e["worker"] for e in answer["timeline"]} == {
        "model": "split-inference", "tool": "split-tools"}


def test_rotating_the_workers_login_under_load_fails_no_request(
        worker: Settings, tmp_path: Path) -> None:
    old = credentials.as_role(worker, "worker").credentials()
    assert old is not None
    marker = script_marker()
    script(worker, marker, {"text": "steady"})
    sent: list[dict[str, Any]] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.wait(0.2):
            sent.append(send(worker, agent="team-helpdesk", conversation_id=f"roll-{len(sent)}-"
                             f"{uuid.uuid4().hex[:6]}", text=f"steady {marker}"))

    feeder = threading.Thread(target=load)
    feeder.start()
    try:
        new = rotate(worker, "worker", grace_s=2.0)
    finally:
        stop.set()
        feeder.join()
    assert len(sent) >= 10
    answers = [answer_to(worker, request) for request in sent]
    assert [a["status"] for a in answers] == ["ok"] * len(sent), [
        (a["status"], a["reason"]) for a in answers if a["status"] != "ok"]
    assert new.kafka.password != old.kafka.password
    assert new.kafka.mechanism != old.kafka.mechanism
    # the old logins are gone, the new ones work
    stale = worker.model_copy(update={"role": "worker", "credentials_file": login_file(
        tmp_path, worker, "worker")})
    Path(stale.credentials_file or "").write_text(old.model_dump_json())
    from clawstream.streams import kafka_access
    try:
        kafka_access.bind(stale)
        with pytest.raises(LoginRefused):
            broker_answers(worker.bootstrap_servers, timeout_s=10)
    finally:
        kafka_access.bind(worker)
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(port=worker.redis_port, username=old.redis.username,
                    password=old.redis.password).ping()
    assert redis_as(worker, "worker").ping()
    # the restarted worker answers with the new login
    assert ask(worker, agent="team-helpdesk", conversation_id=f"roll-after-{uuid.uuid4().hex[:6]}",
               text=f"steady {marker}")["status"] == "ok"


def test_the_admin_login_is_not_rotated_live(stack: Settings) -> None:
    from clawstream.deploy.local import StackError

    with pytest.raises(StackError, match="brokers' own login"):
        rotate(stack, "admin", grace_s=0)



def test_no_password_reaches_a_log(worker: Settings) -> None:
    """Every process the stack runs logs to its log dir: brokers (they print their
    configuration), Redis, the registry, workers, gateway, supervisors."""
    secrets = {s for creds in credentials.ensure(worker).values()
               for s in (creds.kafka.password, creds.redis.password)}
    logs = [p for p in worker.log_dir.rglob("*") if p.is_file()]
    assert any(p.name.startswith("kafka") for p in logs)
    for path in logs:
        text = path.read_text(errors="replace")
        leaked = [s for s in secrets if s in text]
        assert not leaked, f"{path} holds a password"


def test_the_cli_is_the_operator_and_an_analyst_cannot_change_a_flag(stack: Settings) -> None:
    cli = str(Path(sys.executable).with_name("clawstream"))
    flag = f"limit.user.lp-{uuid.uuid4().hex[:6]}"

    def run(role: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([cli, *args], env=child_env(stack, role=role),
                              capture_output=True, text=True, timeout=120, check=False)

    refused = run("analyst", "flags", "set", flag, "50/100")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "refused this process's login the right to write to control.flags" in (
        " ".join(refused.stdout.split()))
    assert run("operator", "flags", "set", flag, "50/100").returncode == 0
    shown = run("analyst", "flags", "get", flag)  # reading flags is not the analyst's either
    assert shown.returncode != 0
    assert flag in run("operator", "flags", "get", flag).stdout
