"""deploy/k8s validated offline: kubeconform (a Go tool of deploy/k8s/tools) against
Kubernetes' JSON schemas (the kubernetes-validate package) and JSON schemas made from the
operators' vendored CRDs (deploy/k8s/crds); the topics cannot drift from the catalogue, nor
the Kafka and Redis users from the roles of deploy/access.py (issue 18, least privilege)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from hashlib import sha256
from pathlib import Path
from typing import Any

import pytest
import yaml

from clawstream.config import Settings
from clawstream.deploy import k8s_topics
from clawstream.deploy.access import ROLES, Grant, Role, kafka_grants, redis_rules
from clawstream.streams.topics import CATALOGUE, changelog_topics

K8S = Path(k8s_topics.__file__).resolve().parent / "k8s"
VLLM_APP = "clawstream-vllm"
KUBERNETES_VERSION = "1.33.0"
# The package's schemas, found without importing it (its import pulls in what we do not use).
_SPEC = importlib.util.find_spec("kubernetes_validate")
assert _SPEC is not None and _SPEC.submodule_search_locations, "pip install -e '.[dev]'"
K8S_SCHEMAS = Path(next(iter(_SPEC.submodule_search_locations))) / "kubernetes-json-schema"


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _manifests() -> list[Path]:
    return [K8S / name for name in _docs(K8S / "kustomization.yaml")[0]["resources"]]


# Templates an operator fills in and applies once, outside the kustomization (an apply would
# reset the passwords to the placeholders); validated all the same.
LOGIN_TEMPLATES = K8S / "redis-logins.yaml"


def _strict(schema: Any) -> Any:
    """No field a CRD does not declare (kubeconform's -strict for Kubernetes' own kinds)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def crd_schemas(target: Path) -> list[str]:
    """Write ``<group>/<kind>_<version>.json`` for every served version of every vendored
    CRD; returns the kinds."""
    kinds = []
    for crd_file in sorted((K8S / "crds").glob("*/*.yaml")):
        for crd in _docs(crd_file):
            spec = crd["spec"]
            for version in spec["versions"]:
                schema = _strict(version["schema"]["openAPIV3Schema"])
                kind = spec["names"]["kind"].lower()
                out = target / spec["group"] / f"{kind}_{version['name']}.json"
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(schema))
            kinds.append(spec["names"]["kind"])
    return kinds


def kubeconform(files: list[Path], schemas: Path) -> subprocess.CompletedProcess[str]:
    go = shutil.which("go") or "/usr/local/go/bin/go"
    env = {**os.environ, "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"}
    return subprocess.run(
        [go, "tool", "kubeconform", "-strict", "-summary", "-output", "json",
         "-kubernetes-version", KUBERNETES_VERSION,
         "-schema-location", f"{schemas}/{{{{ .NormalizedKubernetesVersion }}}}-local"
         "{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json",
         "-schema-location",
         f"{schemas}/{{{{ .Group }}}}/{{{{ .ResourceKind }}}}_{{{{ .ResourceAPIVersion }}}}.json",
         *map(str, files)],
        cwd=K8S / "tools", env=env, capture_output=True, text=True, timeout=600, check=False)


def kubernetes_schemas(target: Path) -> None:
    """Kubernetes' strict schemas of ``KUBERNETES_VERSION``, in kubeconform's layout, their
    references to the shared definitions made relative to the file. The package's schemas
    name themselves (``$id``) under https://kubernetes.io/api/ and resolve
    ``/api/_definitions.json`` there with a loader of their own; kubeconform would go online
    for it, so the ids go and the references point at the file beside them."""
    folder = f"v{KUBERNETES_VERSION}-local-strict"
    (target / folder).mkdir(parents=True)
    for source in (K8S_SCHEMAS / folder).glob("*.json"):
        schema = json.loads(source.read_text())
        schema.pop("$id", None)
        text = json.dumps(schema).replace('"/api/_definitions.json#', '"_definitions.json#')
        (target / folder / source.name).write_text(text)


@pytest.fixture(scope="module")
def schemas(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("schemas")
    kubernetes_schemas(target)
    assert set(crd_schemas(target)) == {"Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser",
                                        "RayService", "ScaledObject", "TriggerAuthentication"}
    return target


def test_every_manifest_validates(schemas: Path) -> None:
    files = [*_manifests(), LOGIN_TEMPLATES]
    result = kubeconform(files, schemas)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)["summary"]
    documents = sum(len(_docs(p)) for p in files)
    assert summary["valid"] == documents and summary["skipped"] == 0


@pytest.mark.parametrize(("kind", "change"), [
    ("KafkaTopic", lambda d: d["spec"].update(partitons=3)),
    ("ScaledObject", lambda d: d["spec"].update(minReplicaCount="two")),
    ("RayService", lambda d: d["spec"]["rayClusterConfig"].update(headGroup={})),
    ("Deployment", lambda d: d["spec"].update(replica=2)),
    ("KafkaUser", lambda d: d["spec"]["authorization"]["acls"][0].update(operations=["Reed"])),
    ("TriggerAuthentication", lambda d: d["spec"].update(secretTargetRefs=[])),
])
def test_a_broken_manifest_is_refused(schemas: Path, tmp_path: Path, kind: str,
                                      change: Any) -> None:
    doc = next(d for p in _manifests() for d in _docs(p) if d["kind"] == kind)
    change(doc)
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(doc))
    result = kubeconform([broken], schemas)
    assert result.returncode != 0
    assert json.loads(result.stdout)["summary"]["invalid"] == 1


def test_every_catalogue_topic_has_a_kafka_topic() -> None:
    declared = {d["spec"]["topicName"] for d in _docs(K8S / "topics.yaml")
                if d["kind"] == "KafkaTopic"}
    wanted = {t.name for t in (*CATALOGUE, *changelog_topics(Settings().app_id))}
    assert not wanted - declared, f"no KafkaTopic for {sorted(wanted - declared)}"
    assert (K8S / "topics.yaml").read_text() == k8s_topics.render(), \
        "deploy/k8s/topics.yaml is stale: python -m clawstream.deploy.k8s_topics"


def test_workers_scale_on_lag_of_catalogue_topics_and_keep_a_warm_pool() -> None:
    scaled = next(d for d in _docs(K8S / "workers.yaml") if d["kind"] == "ScaledObject")
    names = {t.name for t in CATALOGUE}
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["type"] == "kafka" and trigger["metadata"]["topic"] in names
        assert trigger["metadata"]["consumerGroup"] == Settings().app_id
    assert 1 <= scaled["spec"]["minReplicaCount"] < scaled["spec"]["maxReplicaCount"]
    assert scaled["spec"]["maxReplicaCount"] <= k8s_topics.PARTITIONS


def _cluster_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as a pod reads them: from the ConfigMap's variables (JSON for the pools)."""
    for name, value in next(d for d in _docs(K8S / "settings.yaml"))["data"].items():
        monkeypatch.setenv(name, value)
    return Settings()


def test_the_settings_config_map_names_real_settings_and_points_at_the_services(
        monkeypatch: pytest.MonkeyPatch) -> None:
    data = next(d for d in _docs(K8S / "settings.yaml"))["data"]
    fields = {f"CLAWSTREAM_{name.upper()}" for name in Settings.model_fields}
    assert set(data) <= fields, f"not settings: {sorted(set(data) - fields)}"
    settings = _pod_settings(monkeypatch, _workload("Deployment", "clawstream-worker"))
    assert settings.bootstrap_servers == "clawstream-kafka-bootstrap:9092"
    assert settings.redis_url == (
        "redis://clawstream-worker:secret-clawstream-worker-redis@clawstream-redis:6379/0")
    assert settings.serve_url == "http://clawstream-inference-serve-svc:8000"
    registry = next(d for d in _docs(K8S / "schema-registry.yaml") if d["kind"] == "Service")
    assert settings.schema_registry_url == (
        f"http://{registry['metadata']['name']}:{registry['spec']['ports'][0]['port']}"
        "/apis/ccompat/v7")


def test_the_ray_service_serves_the_apps_the_local_stack_deploys() -> None:
    from clawstream.inference.app import ROUTE_PREFIXES
    from clawstream.inference.entry import build

    apps = [a for a in _serve_config()["applications"] if a["name"] != VLLM_APP]
    served = {a["name"]: a["route_prefix"] for a in apps}
    assert served.items() <= ROUTE_PREFIXES.items()
    for app in apps:
        module, _, attr = app["import_path"].partition(":")
        assert (module, attr) == ("clawstream.inference.entry", "build")
        assert build(app["args"]) is not None
    with pytest.raises(ValueError, match="unknown Serve application"):
        build({"app": "nope"})


def _serve_config() -> dict[str, Any]:
    service = _docs(K8S / "ray-service.yaml")[0]
    config: dict[str, Any] = yaml.safe_load(service["spec"]["serveConfigV2"])
    return config


def test_the_serve_config_is_one_serve_accepts() -> None:
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(_serve_config())
    assert {a.name for a in schema.applications} >= {VLLM_APP, "clawstream-inference"}


def test_the_vllm_app_serves_the_pool_that_counts_its_replicas(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The pool `large` calls the vLLM app through the Serve service and takes its tokens/s
    per replica of the app's LLMServer deployment; its LLM config is one Ray accepts.

    Ray Serve LLM's public module imports vLLM (a GPU install), so the config is checked
    with its LLMConfig model from the internal module, and the deployment's name with the
    rule in its builder (``LLMServer:`` + deployment_config.name); both checks read the
    installed Ray, so a Ray that moves them fails here, not in a cluster."""
    from ray.llm._internal.serve.core.configs.llm_config import LLMConfig

    app = next(a for a in _serve_config()["applications"] if a["name"] == VLLM_APP)
    assert app["import_path"] == "ray.serve.llm:build_openai_app"
    [raw] = app["args"]["llm_configs"]
    llm = LLMConfig.model_validate(raw)
    assert llm.llm_engine == "vLLM" and llm.engine_kwargs["enable_auto_tool_choice"] is True
    builder = importlib.util.find_spec("ray.llm._internal.serve.core.server.builder")
    assert builder is not None and builder.origin is not None
    assert 'name_prefix or f"{deployment_cls.__name__}:"' in Path(builder.origin).read_text()
    deployment = f"LLMServer:{raw['deployment_config']['name']}"

    pool = _cluster_settings(monkeypatch).pools["large"]
    assert pool.replicas_of == f"{VLLM_APP}/{deployment}" and pool.capacity_per_replica
    assert pool.upstream is not None and pool.upstream.model == llm.model_id
    assert pool.upstream.base_url == (
        f"http://clawstream-inference-serve-svc:8000{app['route_prefix']}")
    scaling = raw["deployment_config"]["autoscaling_config"]
    gpu = next(g for g in _docs(K8S / "ray-service.yaml")[0]["spec"]["rayClusterConfig"]
               ["workerGroupSpecs"] if g["groupName"] == "gpu")
    assert 1 <= scaling["min_replicas"] <= gpu["minReplicas"]
    assert scaling["max_replicas"] <= gpu["maxReplicas"]


def test_the_model_deployment_scales_within_the_gpu_groups_bounds(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from clawstream.inference.app import generation_autoscaling
    from clawstream.inference.config import InferenceConfig

    settings = _cluster_settings(monkeypatch)
    scaling = generation_autoscaling(InferenceConfig.from_settings(settings))
    service = _docs(K8S / "ray-service.yaml")[0]
    gpu = next(g for g in service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
               if g["groupName"] == "gpu")
    assert 1 <= scaling["min_replicas"] == scaling["initial_replicas"] <= gpu["minReplicas"]
    assert scaling["min_replicas"] < scaling["max_replicas"] <= gpu["maxReplicas"]
    assert scaling["target_ongoing_requests"] == InferenceConfig.from_settings(
        settings).generate_max_ongoing_requests
    # Locally one replica; a maximum below the minimum is the minimum.
    monkeypatch.undo()
    assert generation_autoscaling(InferenceConfig.from_settings(Settings()))["max_replicas"] == 1
    low = Settings(inference_min_replicas=3, inference_max_replicas=2)
    assert generation_autoscaling(InferenceConfig.from_settings(low))["max_replicas"] == 3


Labels = dict[str, str]
WORKER: Labels = {"app": "clawstream-worker"}
GATEWAY: Labels = {"app": "clawstream-gateway"}
RAY: Labels = {"ray.io/is-ray-node": "yes"}
REDIS: Labels = {"app": "clawstream-redis"}
REGISTRY: Labels = {"app": "clawstream-schema-registry"}
SCHEMAS_JOB: Labels = {"app": "clawstream-schemas"}
STRANGER: Labels = {"app": "something-else"}
NAMESPACE: Labels = {"kubernetes.io/metadata.name": "clawstream"}
MONITORING: Labels = {"kubernetes.io/metadata.name": "monitoring",
                      "clawstream.dev/monitoring": "true"}


def _selects(selector: dict[str, Any], labels: Labels) -> bool:
    """A label selector's meaning (matchLabels and the In/NotIn/Exists operators)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        value, op = labels.get(expr["key"]), expr["operator"]
        if ((op == "In" and value not in expr["values"])
                or (op == "NotIn" and value in expr["values"])
                or (op == "Exists" and value is None)):
            return False
    return True


def _peer_matches(peer: dict[str, Any], pod: Labels, namespace: Labels) -> bool:
    """A ``from`` entry: a pod selector alone means this namespace."""
    in_namespace = ("namespaceSelector" not in peer and namespace == NAMESPACE) or (
        "namespaceSelector" in peer and _selects(peer["namespaceSelector"], namespace))
    return in_namespace and _selects(peer.get("podSelector", {}), pod)


def _ingress_allowed(target: Labels, source: Labels, port: int,
                     source_namespace: Labels = NAMESPACE) -> bool:
    """NetworkPolicy semantics: a pod selected by any ingress policy takes only what one of
    those policies' rules lets in (rules add up; no ``from`` means from anywhere, no
    ``ports`` every port)."""
    policies = [d for d in _docs(K8S / "network-policies.yaml")
                if _selects(d["spec"]["podSelector"], target)]
    assert policies, f"no policy selects {target}: it would be open"
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            peers = rule.get("from")
            ports = [p["port"] for p in rule.get("ports", [])]
            if ((peers is None or any(_peer_matches(p, source, source_namespace)
                                      for p in peers))
                    and (not ports or port in ports)):
                return True
    return False


def test_only_the_workers_reach_the_inference_nodes_and_only_workers_and_gateway_redis(
) -> None:
    serve = int(_cluster_settings_port("CLAWSTREAM_SERVE_HTTP_PORT"))
    assert _ingress_allowed(RAY, WORKER, serve)
    assert _ingress_allowed(RAY, RAY, 6379)  # Ray's nodes talk to each other
    for other in (GATEWAY, REDIS, REGISTRY, SCHEMAS_JOB, STRANGER):
        assert not _ingress_allowed(RAY, other, serve), other
    assert _ingress_allowed(RAY, STRANGER, 8080, MONITORING)  # metrics, from monitoring
    assert not _ingress_allowed(RAY, STRANGER, serve, MONITORING)
    assert _ingress_allowed(REDIS, WORKER, 6379) and _ingress_allowed(REDIS, GATEWAY, 6379)
    for other in (RAY, REGISTRY, SCHEMAS_JOB, STRANGER):
        assert not _ingress_allowed(REDIS, other, 6379), other
    assert not _ingress_allowed(REDIS, WORKER, 6379, MONITORING)  # same labels, elsewhere
    for writer in (WORKER, GATEWAY, SCHEMAS_JOB):
        assert _ingress_allowed(REGISTRY, writer, 8080)
    assert not _ingress_allowed(REGISTRY, STRANGER, 8080)
    assert _ingress_allowed(GATEWAY, STRANGER, 8080, {"kubernetes.io/metadata.name": "x"})
    assert not _ingress_allowed(GATEWAY, STRANGER, 6066)
    assert not _ingress_allowed(WORKER, STRANGER, 6066)
    assert _ingress_allowed(WORKER, STRANGER, 6066, MONITORING)
    assert not _ingress_allowed(STRANGER, WORKER, 1234)  # default deny


def test_kafkas_listener_takes_only_clawstreams_pods_and_keda() -> None:
    kafka = next(d for d in _docs(K8S / "kafka.yaml") if d["kind"] == "Kafka")
    [listener] = kafka["spec"]["kafka"]["listeners"]
    peers = listener["networkPolicyPeers"]
    for pod in (WORKER, GATEWAY, REGISTRY, SCHEMAS_JOB):
        assert any(_peer_matches(p, pod, NAMESPACE) for p in peers), pod
    assert not any(_peer_matches(p, STRANGER, NAMESPACE) for p in peers)
    assert any(_peer_matches(p, {}, {"kubernetes.io/metadata.name": "keda"}) for p in peers)
    # Every pod that talks to Kafka carries a label the peers name.
    for path, kind in (("workers.yaml", "Deployment"), ("gateway.yaml", "Deployment"),
                       ("schema-registry.yaml", "Deployment"), ("schema-registry.yaml", "Job")):
        doc = next(d for d in _docs(K8S / path) if d["kind"] == kind)
        labels = doc["spec"]["template"]["metadata"]["labels"]
        assert any(_peer_matches(p, labels, NAMESPACE) for p in peers), (path, kind)


def _cluster_settings_port(name: str) -> str:
    return str(next(d for d in _docs(K8S / "settings.yaml"))["data"][name])


# Least privilege (issue 18): the cluster carries deploy/access.py's roles ------------------

KAFKA_INFRA_USERS = {"clawstream-schema-registry", "clawstream-keda"}
"""Logins of software that is not clawstream's and so has no role: the schema registry and
KEDA; each reaches only what it needs (test_the_registry_and_keda_logins_...)."""
CLUSTER_ROLES: tuple[Role, ...] = tuple(r for r in ROLES if r != "admin")
"""Nothing in the cluster creates topics or grants (topics.yaml, kafka-users.yaml do)."""


def _login_name(role: str) -> str:
    """A role's KafkaUser (so Strimzi's Secret of its password) and its Redis user."""
    return f"clawstream-{role}"


def _redis_secret_name(role: str) -> str:
    return f"clawstream-{role}-redis"


def _all_docs() -> list[dict[str, Any]]:
    return [d for p in _manifests() for d in _docs(p)]


def _kafka_users() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in _all_docs() if d["kind"] == "KafkaUser"}


def _strimzi_acl(grant: Grant) -> dict[str, Any]:
    """A grant as a KafkaUser's ACL rule (Strimzi's resource types and CamelCase operations)."""
    resource: dict[str, Any] = {"type": grant.kind}
    if grant.kind != "cluster":
        resource |= {"name": grant.name, "patternType": "prefix" if grant.prefixed else "literal"}
    operations = ["".join(w.capitalize() for w in op.split("_")) for op in grant.operations]
    return {"resource": resource, "operations": operations}


def test_kafka_authenticates_every_client_and_grants_only_acls() -> None:
    kafka = next(d for d in _docs(K8S / "kafka.yaml") if d["kind"] == "Kafka")
    [listener] = kafka["spec"]["kafka"]["listeners"]
    assert listener["authentication"] == {"type": "scram-sha-512"}
    # No super user of ours: Strimzi's own operators are the only ones (it makes them so).
    assert kafka["spec"]["kafka"]["authorization"] == {"type": "simple"}
    assert "userOperator" in kafka["spec"]["entityOperator"], "KafkaUsers need it"
    assert "allow.everyone.if.no.acl.found" not in kafka["spec"]["kafka"]["config"]


def test_every_roles_kafka_user_has_exactly_its_grants(monkeypatch: pytest.MonkeyPatch) -> None:
    app_id = _cluster_settings(monkeypatch).app_id
    users = _kafka_users()
    assert set(users) == {_login_name(r) for r in CLUSTER_ROLES} | KAFKA_INFRA_USERS
    for role in CLUSTER_ROLES:
        user = users[_login_name(role)]
        assert user["metadata"]["labels"]["strimzi.io/cluster"] == "clawstream"
        assert user["spec"]["authentication"] == {"type": "scram-sha-512"}
        assert user["spec"]["authorization"]["type"] == "simple"
        wanted = [_strimzi_acl(g) for g in kafka_grants(role, app_id)]
        assert user["spec"]["authorization"]["acls"] == wanted, (
            f"deploy/k8s/kafka-users.yaml: {role}'s ACLs drifted from deploy/access.py; they "
            "are:\n" + yaml.safe_dump(wanted, sort_keys=False))


def test_the_registry_and_keda_logins_reach_only_what_they_need() -> None:
    users = _kafka_users()
    for name in KAFKA_INFRA_USERS:
        assert users[name]["spec"]["authentication"] == {"type": "scram-sha-512"}
    # KEDA: describes the workers' group and the topics it scales on, reads no record.
    scaled = next(d for d in _docs(K8S / "workers.yaml") if d["kind"] == "ScaledObject")
    triggers = scaled["spec"]["triggers"]
    wanted = [{"resource": {"type": "group", "name": triggers[0]["metadata"]["consumerGroup"],
                            "patternType": "literal"}, "operations": ["Describe"]},
              *({"resource": {"type": "topic", "name": t["metadata"]["topic"],
                              "patternType": "literal"}, "operations": ["Describe"]}
                for t in triggers)]
    assert users["clawstream-keda"]["spec"]["authorization"]["acls"] == wanted
    auth = {d["metadata"]["name"]: d for d in _docs(K8S / "workers.yaml")
            if d["kind"] == "TriggerAuthentication"}
    for trigger in triggers:
        ref = auth[trigger["authenticationRef"]["name"]]
        assert ref["spec"]["secretTargetRef"] == [
            {"parameter": "password", "name": "clawstream-keda", "key": "password"}]
        config = {c["parameter"]: (c["name"], c["key"]) for c in ref["spec"]["configMapTargetRef"]}
        login = next(d for d in _docs(K8S / "workers.yaml") if d["kind"] == "ConfigMap"
                     and d["metadata"]["name"] == config["username"][0])["data"]
        assert login[config["username"][1]] == "clawstream-keda"
        assert login[config["sasl"][1]] == "scram_sha512"
    # The registry: its journal (read whole at each start, in a group of a random name).
    registry = _workload("Deployment", "clawstream-schema-registry")
    env = {e["name"]: e for e in _containers(registry)[0]["env"]}
    journal = env["REGISTRY_KAFKASQL_TOPIC"]["value"]
    assert users["clawstream-schema-registry"]["spec"]["authorization"]["acls"] == [
        {"resource": {"type": "topic", "name": journal, "patternType": "literal"},
         "operations": ["Read", "Write", "Describe"]},
        {"resource": {"type": "group", "name": "*", "patternType": "literal"},
         "operations": ["Read"]}]
    assert env["REGISTRY_KAFKA_COMMON_SASL_MECHANISM"]["value"] == "SCRAM-SHA-512"
    assert env["REGISTRY_KAFKA_COMMON_SECURITY_PROTOCOL"]["value"] == "SASL_PLAINTEXT"
    assert env["REGISTRY_KAFKA_COMMON_SASL_JAAS_CONFIG"]["valueFrom"]["secretKeyRef"] == {
        "name": "clawstream-schema-registry", "key": "sasl.jaas.config"}


def _redis() -> tuple[dict[str, Any], dict[str, str]]:
    docs = _docs(K8S / "redis.yaml")
    stateful = next(d for d in docs if d["kind"] == "StatefulSet")
    rules = next(d for d in docs if d["kind"] == "ConfigMap"
                 and d["metadata"]["name"] == "clawstream-redis-acl")["data"]
    return stateful, rules


def _login_templates() -> dict[str, dict[str, str]]:
    return {d["metadata"]["name"]: d["stringData"] for d in _docs(LOGIN_TEMPLATES)}


def test_redis_has_the_roles_users_and_rules_and_no_default_user(tmp_path: Path) -> None:
    stateful, rules = _redis()
    assert rules == {role: redis_rules(role) for role in CLUSTER_ROLES}, (
        "deploy/k8s/redis.yaml's clawstream-redis-acl drifted from deploy/access.py")
    # One Secret per role (none for all), read only by Redis to write its ACL file.
    templates = _login_templates()
    assert set(templates) == {_redis_secret_name(r) for r in CLUSTER_ROLES}
    for role in CLUSTER_ROLES:
        assert set(templates[_redis_secret_name(role)]) == {"username", "password"}
        assert templates[_redis_secret_name(role)]["username"] == _login_name(role)
    pod = stateful["spec"]["template"]["spec"]
    [logins] = [v for v in pod["volumes"] if v["name"] == "logins"]
    assert [s["secret"]["name"] for s in logins["projected"]["sources"]] == [
        _redis_secret_name(r) for r in CLUSTER_ROLES]
    for source, role in zip(logins["projected"]["sources"], CLUSTER_ROLES, strict=True):
        assert source["secret"]["items"] == [{"key": "username", "path": f"{role}/username"},
                                             {"key": "password", "path": f"{role}/password"}]
    [redis] = pod["containers"]
    assert redis["args"][redis["args"].index("--aclfile") + 1] == "/etc/redis/acl/users.acl"

    # The init container's script, run on the mounted files: the file Redis starts with.
    [init] = pod["initContainers"]
    script = init["command"][-1]
    root = tmp_path / "etc-redis"
    (root / "rules").mkdir(parents=True)
    for name, rule in rules.items():
        (root / "rules" / name).write_text(rule)
        (root / "logins" / name).mkdir(parents=True)
        (root / "logins" / name / "username").write_text(_login_name(name))
        (root / "logins" / name / "password").write_text(f"pw of {name}")
    (root / "acl").mkdir()
    local = script.replace("/etc/redis/", f"{root}/").replace('chown redis:redis "$acl.new"\n',
                                                              "")
    subprocess.run(["sh", "-c", local], check=True, timeout=30)
    lines = (root / "acl" / "users.acl").read_text().splitlines()
    assert lines[0] == "user default off resetkeys -@all"
    assert sorted(lines[1:]) == sorted(
        f"user {_login_name(role)} on #{sha256(f'pw of {role}'.encode()).hexdigest()} "
        f"{redis_rules(role)}" for role in CLUSTER_ROLES)
    # ... and refuses a template's placeholder.
    (root / "logins" / "gateway" / "password").write_text(
        templates[_redis_secret_name("gateway")]["password"])
    refused = subprocess.run(["sh", "-c", local], capture_output=True, text=True, timeout=30,
                             check=False)
    assert refused.returncode != 0 and "clawstream-gateway-redis" in refused.stderr


def _workloads() -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in _all_docs()
            if d["kind"] in ("Deployment", "StatefulSet", "Job", "RayService")}


def _workload(kind: str, name: str) -> dict[str, Any]:
    return _workloads()[(kind, name)]


def _pod_specs(workload: dict[str, Any]) -> list[dict[str, Any]]:
    if workload["kind"] == "RayService":
        cluster = workload["spec"]["rayClusterConfig"]
        return [cluster["headGroupSpec"]["template"]["spec"],
                *(g["template"]["spec"] for g in cluster["workerGroupSpecs"])]
    return [workload["spec"]["template"]["spec"]]


def _containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for pod in _pod_specs(workload)
            for c in (*pod.get("initContainers", []), *pod["containers"])]


def _secrets_read(workload: dict[str, Any]) -> set[str]:
    """Every Secret a workload's pods can read: env, envFrom and volumes."""
    names: set[str] = set()
    for container in _containers(workload):
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                names.add(ref["name"])
        names |= {e["secretRef"]["name"] for e in container.get("envFrom", [])
                  if "secretRef" in e}
    for pod in _pod_specs(workload):
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                names.add(volume["secret"]["secretName"])
            for source in volume.get("projected", {}).get("sources", []):
                if "secret" in source:
                    names.add(source["secret"]["name"])
    return names


ROLE_OF: dict[tuple[str, str], Role] = {
    ("Deployment", "clawstream-worker"): "worker",
    ("Deployment", "clawstream-gateway"): "gateway",
    ("Job", "clawstream-schemas"): "operator",  # the CLI
}
OTHER_SECRETS: dict[tuple[str, str], set[str]] = {
    ("Deployment", "clawstream-schema-registry"): {"clawstream-schema-registry"},
    ("StatefulSet", "clawstream-redis"): {_redis_secret_name(r) for r in CLUSTER_ROLES},
    ("RayService", "clawstream-inference"): set(),  # the inference nodes: no Kafka, no Redis
}


def test_each_component_reads_only_its_own_roles_secrets() -> None:
    workloads = _workloads()
    assert set(workloads) == set(ROLE_OF) | set(OTHER_SECRETS), \
        "a new workload: say here which secrets it may read"
    for key, role in ROLE_OF.items():
        workload = workloads[key]
        kafka, redis = _login_name(role), _redis_secret_name(role)
        assert _secrets_read(workload) == {kafka, redis}, key
        [container] = _containers(workload)
        env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
        assert env["CLAWSTREAM_ROLE"] == role, key
        assert env["CLAWSTREAM_KAFKA_USERNAME"] == kafka and kafka in _kafka_users(), key
        assert env["CLAWSTREAM_KAFKA_PASSWORD"] == {
            "secretKeyRef": {"name": kafka, "key": "password"}}, key
        for field in ("username", "password"):
            assert env[f"CLAWSTREAM_REDIS_{field.upper()}"] == {
                "secretKeyRef": {"name": redis, "key": field}}, key
    for key, secrets in OTHER_SECRETS.items():
        assert _secrets_read(workloads[key]) == secrets, key
        names = {e["name"] for c in _containers(workloads[key]) for e in c.get("env", [])}
        assert not {n for n in names if n.startswith(("CLAWSTREAM_KAFKA_", "CLAWSTREAM_REDIS_",
                                                      "CLAWSTREAM_ROLE"))}, key
    # Every CLAWSTREAM_ variable a pod sets is a setting.
    fields = {f"CLAWSTREAM_{name.upper()}" for name in Settings.model_fields}
    for key, workload in workloads.items():
        for container in _containers(workload):
            names = {e["name"] for e in container.get("env", [])
                     if e["name"].startswith("CLAWSTREAM_")}
            assert names <= fields, (key, sorted(names - fields))


def _pod_settings(monkeypatch: pytest.MonkeyPatch, workload: dict[str, Any]) -> Settings:
    """Settings as the workload's container reads them: the ConfigMap, its own variables,
    the Redis login's username from its template and any password as ``secret-<name>``."""
    _cluster_settings(monkeypatch)
    templates = _login_templates()
    [container] = _containers(workload)
    for env in container.get("env", []):
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref and ref["key"] == "password":
            monkeypatch.setenv(env["name"], f"secret-{ref['name']}")
        elif ref:
            monkeypatch.setenv(env["name"], templates[ref["name"]][ref["key"]])
        elif "value" in env:
            monkeypatch.setenv(env["name"], env["value"])
    return Settings()


@pytest.mark.parametrize("key", sorted(ROLE_OF))
def test_a_component_logs_in_as_its_role(monkeypatch: pytest.MonkeyPatch,
                                         key: tuple[str, str]) -> None:
    role = ROLE_OF[key]
    settings = _pod_settings(monkeypatch, _workload(*key))
    assert settings.auth  # the ConfigMap's, whatever a unit test's default
    creds = settings.credentials()
    assert creds is not None and creds.role == role
    security = settings.kafka_security()
    assert security["sasl.username"] == _login_name(role)
    assert security["sasl.password"] == f"secret-{_login_name(role)}"
    assert security["sasl.mechanism"] == "SCRAM-SHA-512"  # the KafkaUsers' authentication
    assert settings.redis_url.startswith(
        f"redis://{_login_name(role)}:secret-{_redis_secret_name(role)}@")
