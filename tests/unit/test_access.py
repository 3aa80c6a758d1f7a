"""The roles of deploy/access.py against the names they must cover: every Redis key the
code makes is reachable by exactly the roles whose component makes it, and the worker is
no more than its three parts."""

from __future__ import annotations

from fnmatch import fnmatchcase

import pytest

from clawstream.deploy.access import REDIS_KEYS, ROLES, kafka_grants, redis_rules
from clawstream.processors import keys
from clawstream.processors.app import WORKER_PARTS

# Each key the code writes, and the roles whose component writes it.
KEYS_AND_WRITERS = {
    keys.prompt_cache_key("v1", "m", {}, []): {"inference"},
    keys.tool_cache_key("search", "1", {}): {"tools"},
    keys.embedding_cache_key("minilm", "text"): {"tools", "inference"},
    keys.ledger_key("step"): {"tools"},
    keys.ledger_claim_key("step"): {"tools"},
    keys.bucket_key("pool", "default"): {"inference"},
    keys.admissions_key("default"): {"inference"},
    keys.tenant_budget_key("t", 0): {"coordinator", "inference"},
    keys.arrivals_key("user", "u"): {"coordinator"},
    keys.recall_key("c"): {"coordinator", "tools"},
    keys.canary_rollback_key("a", "2", 0): {"coordinator"},
    keys.api_key_key("h"): {"gateway", "operator"},
    keys.request_record_key("r"): {"gateway", "operator"},
    keys.gateway_idempotency_key("t", "k"): {"gateway", "operator"},
    "tool:fault:calls:x": {"tools"},
}


def holders(key: str) -> set[str]:
    return {role for role, patterns in REDIS_KEYS.items()
            if any(fnmatchcase(key, p) for p in patterns)}


@pytest.mark.parametrize(("key", "writers"), KEYS_AND_WRITERS.items())
def test_each_redis_key_is_reachable_by_its_writers_only(key: str, writers: set[str]) -> None:
    assert holders(key) == writers


def test_the_worker_is_exactly_its_three_parts() -> None:
    union = {g for part in WORKER_PARTS for g in kafka_grants(part, "app")}
    worker = set(kafka_grants("worker", "app"))
    # run apart, tools and inference have a Faust app (group, topics) of their own;
    # together they share the coordinator's
    parts_apart = {g for g in union if g.name.startswith(("app-tools", "app-inference"))}
    assert worker - union == set()
    assert union - worker == parts_apart
    rules = redis_rules("worker")
    assert all(f"~{p}" in rules for part in WORKER_PARTS for p in REDIS_KEYS[part])


def test_no_role_but_the_admin_may_create_anything_outside_its_own_topics() -> None:
    for role in ROLES:
        for grant in kafka_grants(role, "app"):
            if "CREATE" in grant.operations:
                assert grant.prefixed and grant.name.startswith("app-"), (role, grant)
            assert grant.kind != "cluster", (role, grant)
    assert kafka_grants("admin", "app") == ()  # a super user on the brokers


def test_readers_never_write() -> None:
    assert all("WRITE" not in g.operations for g in kafka_grants("analyst", "app"))
    assert redis_rules("analyst") == "resetkeys -@all +ping"
    assert "-@dangerous" in redis_rules("gateway") and "-@admin" in redis_rules("worker")
