"""Every Kubernetes object under k8s/ besides the RayService (tests/unit/test_k8s_manifest.py has that one):
accepted by the schema the API server applies to its kind, and in step with the RayService it goes with.

Built-in kinds (the Secret and volume claim examples, the job store's Redis StatefulSet and Service) are checked
against the Kubernetes OpenAPI schemas that the PyPI package kubernetes-validate ships, offline and in strict
mode (an unknown field is an error, as `kubectl apply`'s strict field validation makes it), for the oldest
Kubernetes the guide supports and the newest the package knows. Custom resources are checked against their
CRD, vendored in k8s/schemas/ (source and licence in its README.md): the Prometheus operator's PodMonitor. A
kind with neither fails: vendor its CRD.
"""

from __future__ import annotations

import copy
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from tests.unit.test_k8s_manifest import SECRET_NAME, _Loader, _to_json_schema, looks_like_secret

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
SCHEMAS = K8S / "schemas"
MANIFEST = K8S / "rayservice.yaml"
PODMONITOR = K8S / "podmonitor.yaml"
PVC_EXAMPLE = K8S / "models-pvc.example.yaml"
JOBS_PVC_EXAMPLE = K8S / "jobs-pvc.example.yaml"
REDIS = K8S / "redis.yaml"
SECRET_EXAMPLE = K8S / "secret.example.yaml"

# The oldest Kubernetes minor the guide supports, and the newest that kubernetes-validate 1.37 ships.
KUBERNETES_VERSIONS = ("1.33", "1.37")
# Custom resources: (apiVersion, kind) -> the vendored CRD that defines them.
CRDS = {("monitoring.coreos.com/v1", "PodMonitor"): SCHEMAS / "monitoring.coreos.com_podmonitors.yaml"}
TESTED_ELSEWHERE = {("ray.io/v1", "RayService")}  # tests/unit/test_k8s_manifest.py


def _objects() -> list[tuple[str, dict[str, Any]]]:
    """(file:index, document) of every Kubernetes object in a YAML file under k8s/, schemas aside. Files that
    hold no object (a Prometheus rule file, promtool tests) have documents without apiVersion and kind."""
    found = []
    for path in sorted(K8S.rglob("*.yaml")):
        if SCHEMAS in path.parents:
            continue
        for index, doc in enumerate(yaml.load_all(path.read_text(), Loader=_Loader)):
            if isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc:
                if (doc["apiVersion"], doc["kind"]) not in TESTED_ELSEWHERE:
                    found.append((f"{path.relative_to(REPO)}:{index}", doc))
    return found


OBJECTS = _objects()


def _is_builtin(api_version: str) -> bool:
    """Core (v1) and the k8s.io groups (apps/v1, networking.k8s.io/v1 ...): kinds the API server itself serves."""
    group = api_version.rpartition("/")[0]
    return "." not in group or group.endswith(".k8s.io")


@cache
def _crd_validator(api_version: str, kind: str) -> Draft7Validator:
    path = CRDS.get((api_version, kind))
    assert path is not None, (f"no schema for {kind} ({api_version}): vendor its CRD in k8s/schemas/, note its "
                              "source and licence in k8s/schemas/README.md and add it to CRDS here")
    assert path.is_file(), f"{path.relative_to(REPO)} is missing: restore it (see k8s/schemas/README.md)"
    crd = yaml.load(path.read_text(), Loader=_Loader)
    group, _, version = api_version.partition("/")
    assert crd["kind"] == "CustomResourceDefinition"
    assert (crd["spec"]["group"], crd["spec"]["names"]["kind"]) == (group, kind)
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version and v["served"]]
    schema = _to_json_schema(served["schema"]["openAPIV3Schema"])
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


def _errors(doc: dict[str, Any], kubernetes_version: str) -> list[str]:
    """Why the API server of that version would refuse `doc` (empty: it would accept it)."""
    if _is_builtin(doc["apiVersion"]):
        import kubernetes_validate

        try:
            kubernetes_validate.validate(doc, kubernetes_version, strict=True)
        except kubernetes_validate.ValidationError as e:
            return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"]
        return []
    validator = _crd_validator(doc["apiVersion"], doc["kind"])
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.path)))]


def _load_one(path: Path) -> dict[str, Any]:
    (doc,) = [d for d in yaml.load_all(path.read_text(), Loader=_Loader) if d]
    return doc


@pytest.fixture(scope="module")
def rayservice() -> dict[str, Any]:
    (service,) = [d for d in yaml.load_all(MANIFEST.read_text(), Loader=_Loader) if d and d["kind"] == "RayService"]
    return service


def _pod_templates(rayservice: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    cluster = rayservice["spec"]["rayClusterConfig"]
    return [("head", cluster["headGroupSpec"])] + [(g["groupName"], g) for g in cluster["workerGroupSpecs"]]


# --- the schemas --------------------------------------------------------------------------------------


def test_the_objects_are_found():
    """The check below is not vacuous: the examples and the PodMonitor are among the objects it validates."""
    kinds = {(where.partition(":")[0], doc["kind"]) for where, doc in OBJECTS}
    expected = [(SECRET_EXAMPLE, "Secret"), (PVC_EXAMPLE, "PersistentVolumeClaim"), (PODMONITOR, "PodMonitor"),
                (JOBS_PVC_EXAMPLE, "PersistentVolumeClaim"), (REDIS, "StatefulSet"), (REDIS, "Service")]
    assert {(str(path.relative_to(REPO)), kind) for path, kind in expected} <= kinds


@pytest.mark.parametrize("kubernetes_version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(("where", "doc"), OBJECTS, ids=[where for where, _ in OBJECTS])
def test_object_validates_against_its_schema(where, doc, kubernetes_version):
    assert _errors(doc, kubernetes_version) == [], where


@pytest.mark.parametrize("path", [SECRET_EXAMPLE, PVC_EXAMPLE, JOBS_PVC_EXAMPLE, PODMONITOR], ids=lambda p: p.name)
def test_schema_check_is_not_vacuous(path):
    """Each schema rejects a misspelt field, a wrong type and (where the kind has one) a missing required field."""
    doc = _load_one(path)
    typo = copy.deepcopy(doc)
    typo["spec" if "spec" in doc else "metadata"]["labelz"] = {}
    wrong_type = copy.deepcopy(doc)
    if doc["kind"] == "PodMonitor":  # a CRD leaves metadata to the API server: a spec field instead
        wrong_type["spec"]["podMetricsEndpoints"] = "metrics"
    else:
        wrong_type["metadata"]["labels"] = "transcription-service"
    broken = [typo, wrong_type]
    if doc["kind"] == "PodMonitor":
        missing = copy.deepcopy(doc)
        del missing["spec"]["selector"]
        broken.append(missing)
    for version in KUBERNETES_VERSIONS:
        for bad in broken:
            assert _errors(bad, version), (path.name, version, bad)


def test_a_kind_without_a_schema_fails():
    alien = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    with pytest.raises(AssertionError, match="vendor its CRD"):
        _errors(alien, KUBERNETES_VERSIONS[0])


# --- in step with the RayService ----------------------------------------------------------------------


def test_podmonitor_scrapes_every_ray_pod_on_its_metrics_port(rayservice):
    """Its selector matches the head and every worker group's pods, and each endpoint's port is a named port of
    every Ray container, the port Ray exports metrics on there (rayStartParams metrics-export-port)."""
    monitor = _load_one(PODMONITOR)
    selector = monitor["spec"]["selector"]
    assert set(selector) == {"matchLabels"}, "only matchLabels are checked here"
    endpoints = monitor["spec"]["podMetricsEndpoints"]
    assert endpoints
    for name, group in _pod_templates(rayservice):
        labels = group["template"]["metadata"]["labels"]
        assert selector["matchLabels"].items() <= labels.items(), f"{name}: the PodMonitor misses these pods"
        ray_container = group["template"]["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in ray_container.get("ports", [])}
        for endpoint in endpoints:
            assert endpoint["port"] in ports, f"{name}: no container port named {endpoint['port']!r}"
            exported = int(group.get("rayStartParams", {}).get("metrics-export-port", -1))
            assert ports[endpoint["port"]] == exported, f"{name}: Ray exports metrics on {exported}"
    # Nothing else is scraped: the dashboard (8265) and the GCS (6379) are not metrics endpoints.
    assert {e["port"] for e in endpoints} == {"metrics"}


def test_volume_claim_examples_are_the_claims_the_pods_mount(rayservice):
    """The model claim and the job claim, each with an example to apply; pods on several nodes mount both at
    once (GPU pods the models; every pod that can run the ingress the jobs), so both are ReadWriteMany."""
    claims = [_load_one(PVC_EXAMPLE), _load_one(JOBS_PVC_EXAMPLE)]
    claimed = {v["persistentVolumeClaim"]["claimName"]
               for _, group in _pod_templates(rayservice)
               for v in group["template"]["spec"].get("volumes", []) if "persistentVolumeClaim" in v}
    assert claimed == {claim["metadata"]["name"] for claim in claims} == {"transcription-models",
                                                                         "transcription-jobs"}
    for claim in claims:
        assert "ReadWriteMany" in claim["spec"]["accessModes"], claim["metadata"]["name"]


# --- the job store ------------------------------------------------------------------------------------


def _redis(kind: str) -> dict[str, Any]:
    (doc,) = [d for d in yaml.load_all(REDIS.read_text(), Loader=_Loader) if d and d["kind"] == kind]
    return doc


def _redis_container() -> dict[str, Any]:
    (container,) = _redis("StatefulSet")["spec"]["template"]["spec"]["containers"]
    return container


def _flag(args: list[str], name: str) -> str:
    """The value after `--name` on redis-server's command line (Redis takes `--name value`)."""
    assert args.count(f"--{name}") == 1, f"--{name} given {args.count(f'--{name}')} times"
    return args[args.index(f"--{name}") + 1]


def test_redis_keeps_an_append_only_file_on_its_volume():
    """Accepted jobs survive a restart of Redis: the append-only file is on, fsynced every second, in /data
    on the StatefulSet's own claim."""
    statefulset = _redis("StatefulSet")
    container = _redis_container()
    args = [*container.get("command", []), *container["args"]]
    assert "redis-server" in args
    assert _flag(args, "appendonly") == "yes"
    assert _flag(args, "appendfsync") in ("everysec", "always")
    assert _flag(args, "maxmemory-policy") == "noeviction", "a full Redis must refuse jobs, not drop them"
    assert statefulset["spec"]["replicas"] == 1
    templates = {c["metadata"]["name"]: c for c in statefulset["spec"]["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts.get("/data") in templates, "/data is not on the StatefulSet's claim"


def test_redis_password_comes_from_the_secret():
    """--requirepass is `$(VAR)` that Kubernetes expands from an env var read from the Secret, never a literal;
    the readiness probe authenticates (REDISCLI_AUTH from the Secret) and names no password either."""
    container = _redis_container()
    env = {var["name"]: var for var in container["env"]}
    password = _flag(container["args"], "requirepass")
    match = re.fullmatch(r"\$\((\w+)\)", password)
    assert match, f"--requirepass {password!r} is not a $(VAR) reference"
    for name in (match.group(1), "REDISCLI_AUTH"):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert "value" not in env[name] and (ref["name"], ref["key"]) == (SECRET_NAME, "redis-password"), name
        assert ref.get("optional", False) is False, f"{name}: Redis must not start without a password"
    for var in container["env"]:
        assert "value" not in var or not looks_like_secret(str(var["value"])), var["name"]
    probe = " ".join(container["readinessProbe"]["exec"]["command"])
    assert "redis-cli" in probe and "ping" in probe and "PONG" in probe
    assert " -a " not in f" {probe} " and "--pass" not in probe and "$(" not in probe, probe


def test_redis_runs_as_non_root_with_a_pinned_image_and_bounded_resources():
    pod = _redis("StatefulSet")["spec"]["template"]["spec"]
    container = _redis_container()
    name, _, tag = container["image"].rpartition(":")
    assert name == "redis" and re.fullmatch(r"\d+\.\d+(\.\d+)?", tag), container["image"]
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), kind
    assert container["resources"]["requests"]["memory"] == container["resources"]["limits"]["memory"]


def test_the_job_store_url_names_the_redis_service():
    """The URL the Secret example shows is the Service of redis.yaml, on its port, and the Service selects
    the StatefulSet's pods."""
    from urllib.parse import urlsplit

    service, statefulset = _redis("Service"), _redis("StatefulSet")
    url = urlsplit(_load_one(SECRET_EXAMPLE)["stringData"]["job-store-url"])
    assert url.scheme == "redis" and url.hostname == service["metadata"]["name"] == "transcription-redis"
    assert "REPLACE_ME" in (url.password or ""), "a placeholder password, never a real one"
    (port,) = service["spec"]["ports"]
    assert url.port == port["port"] == 6379
    pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert statefulset["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    container_ports = {p["name"]: p["containerPort"] for p in _redis_container()["ports"]}
    assert container_ports[port["targetPort"]] == port["port"]
