"""deploy/k8s validated offline: kubeconform (a Go tool of deploy/k8s/tools) against
Kubernetes' JSON schemas (the kubernetes-validate package) and JSON schemas made from the
operators' vendored CRDs (deploy/k8s/crds); the topics cannot drift from the catalogue."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from clawstream.config import Settings
from clawstream.deploy import k8s_topics
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
    assert set(crd_schemas(target)) == {"Kafka", "KafkaNodePool", "KafkaTopic", "RayService",
                                        "ScaledObject"}
    return target


def test_every_manifest_validates(schemas: Path) -> None:
    result = kubeconform(_manifests(), schemas)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)["summary"]
    documents = sum(len(_docs(p)) for p in _manifests())
    assert summary["valid"] == documents and summary["skipped"] == 0


@pytest.mark.parametrize(("kind", "change"), [
    ("KafkaTopic", lambda d: d["spec"].update(partitons=3)),
    ("ScaledObject", lambda d: d["spec"].update(minReplicaCount="two")),
    ("RayService", lambda d: d["spec"]["rayClusterConfig"].update(headGroup={})),
    ("Deployment", lambda d: d["spec"].update(replica=2)),
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
    settings = _cluster_settings(monkeypatch)
    assert settings.bootstrap_servers == "clawstream-kafka-bootstrap:9092"
    assert settings.redis_url == "redis://clawstream-redis:6379/0"
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
