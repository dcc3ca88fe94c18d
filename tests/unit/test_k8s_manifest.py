"""k8s/rayservice.yaml: accepted by the RayService CRD, in step with serve_config.yaml, no secrets in it,
no telemetry out of the pods, and Ray's dashboard never exposed.

The CRD is KubeRay's published `ray.io_rayservices.yaml`, vendored in k8s/schemas/ (source, commit and licence
in its README.md and LICENSE), so this check never skips. Its v1
`openAPIV3Schema` is the schema the API server applies, so a manifest that validates here is one the cluster
accepts, field names and types included. `kubectl apply` rejects unknown fields by default (strict field
validation), so unknown fields are errors here too.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "k8s" / "rayservice.yaml"
SECRET_EXAMPLE = REPO / "k8s" / "secret.example.yaml"
REDIS = REPO / "k8s" / "redis.yaml"
JOBS_PVC_EXAMPLE = REPO / "k8s" / "jobs-pvc.example.yaml"
SERVE_CONFIG = REPO / "serve_config.yaml"
CRD = REPO / "k8s" / "schemas" / "ray.io_rayservices.yaml"

SECRET_NAME = "transcription-secrets"
# env var -> (key in the Secret, may the key be missing)
SECRET_ENV = {"HF_TOKEN": ("hf-token", False), "TRANSCRIPTION_API_KEY": ("api-key", True),
              # Durable jobs: the shared job store's URL holds the Redis password; callbacks may go unsigned.
              "TRANSCRIPTION_JOB_STORE_URL": ("job-store-url", False),
              "TRANSCRIPTION_CALLBACK_SECRET": ("callback-secret", True)}
JOBS_CLAIM = "transcription-jobs"
TELEMETRY_OFF = {
    "PYANNOTE_METRICS_ENABLED": "0", "HF_HUB_DISABLE_TELEMETRY": "1", "RAY_USAGE_STATS_ENABLED": "0"}
DASHBOARD_PORT = 8265

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# --- loading ------------------------------------------------------------------------------------------


def _to_json_schema(node: dict[str, Any]) -> dict[str, Any]:
    """A Kubernetes structural schema as plain JSON Schema (Draft 7).

    `x-kubernetes-*` keys are dropped (CEL rules, list/map types: the API server's business), except that
    `x-kubernetes-int-or-string` without an `anyOf` becomes one and `x-kubernetes-preserve-unknown-fields`
    keeps an object open; `nullable` allows null; every other object with `properties` is closed, as the
    API server's strict field validation treats it.
    """
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key == "nullable":
            continue
        if key == "properties":
            out[key] = {name: _to_json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = _to_json_schema(value)
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [_to_json_schema(sub) for sub in value]
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in node:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if ("properties" in node and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def validator() -> Draft7Validator:
    # A failure, not a skip: without the CRD nothing here says the cluster would accept the manifest.
    assert CRD.is_file(), f"{CRD.relative_to(REPO)} is missing: restore it (see k8s/schemas/README.md)"
    crd = yaml.load(CRD.read_text(), Loader=_Loader)
    assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["names"]["kind"] == "RayService"
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = _to_json_schema(v1["schema"]["openAPIV3Schema"])
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


@pytest.fixture(scope="module")
def documents() -> list[dict[str, Any]]:
    return [d for d in yaml.load_all(MANIFEST.read_text(), Loader=_Loader) if d]


@pytest.fixture(scope="module")
def rayservice(documents) -> dict[str, Any]:
    (service,) = [d for d in documents if d["kind"] == "RayService"]
    return service


@pytest.fixture(scope="module")
def serve_config_v2(rayservice) -> dict[str, Any]:
    return yaml.safe_load(rayservice["spec"]["serveConfigV2"])


def _errors(validator: Draft7Validator, doc: dict[str, Any]) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.path)))]


def _pod_templates(rayservice: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    cluster = rayservice["spec"]["rayClusterConfig"]
    yield "head", cluster["headGroupSpec"]["template"]["spec"]
    for group in cluster.get("workerGroupSpecs", []):
        yield group["groupName"], group["template"]["spec"]


def _containers(rayservice: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every container the manifest describes, the autoscaler sidecar's options included."""
    for group, pod in _pod_templates(rayservice):
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            yield f"{group}/{container['name']}", container
    options = rayservice["spec"]["rayClusterConfig"].get("autoscalerOptions")
    if rayservice["spec"]["rayClusterConfig"].get("enableInTreeAutoscaling"):
        yield "head/autoscaler", {"name": "autoscaler", "env": (options or {}).get("env", [])}


def _ray_containers(rayservice: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The Ray container of each group (KubeRay's rule: the first one)."""
    for group, pod in _pod_templates(rayservice):
        yield group, pod["containers"][0]


# --- the CRD ------------------------------------------------------------------------------------------


def test_rayservice_validates_against_the_crd(validator, documents):
    services = [d for d in documents if d.get("kind") == "RayService"]
    assert services, "no RayService in k8s/rayservice.yaml"
    for doc in services:
        assert doc["apiVersion"] == "ray.io/v1"
        assert _errors(validator, doc) == []


def test_schema_check_is_not_vacuous(validator, rayservice):
    """The converted schema rejects a misspelt field, a wrong type and a missing required field."""
    typo = copy.deepcopy(rayservice)
    typo["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["minReplica"] = 1
    wrong_type = copy.deepcopy(rayservice)
    wrong_type["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] = "yes"
    missing = copy.deepcopy(rayservice)
    del missing["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
    for broken in (typo, wrong_type, missing):
        assert _errors(validator, broken)


# --- serveConfigV2 and serve_config.yaml --------------------------------------------------------------


def test_serve_config_v2_is_a_valid_serve_config(serve_config_v2):
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(serve_config_v2)


def test_serve_config_v2_is_serve_config_yaml(serve_config_v2):
    """serveConfigV2 and serve_config.yaml are one config written twice (KubeRay takes it inline, as a
    string; `serve deploy` takes the file), so they could drift apart silently. Both are parsed and the
    structures compared, so comments and layout may differ but nothing that Serve reads can: first the
    applications' import_path and args (what the app is built from), then the whole config (replicas,
    GPU shares, autoscaling, runtime_env, HTTP options). A Kubernetes-only difference would have to be
    written down here, on purpose."""
    expected = yaml.safe_load(SERVE_CONFIG.read_text())
    apps = {a["name"]: a for a in serve_config_v2["applications"]}
    assert set(apps) == {a["name"] for a in expected["applications"]}
    for app in expected["applications"]:
        assert apps[app["name"]]["import_path"] == app["import_path"] == "serve_app.app:build_app"
        assert apps[app["name"]]["args"] == app["args"]
    if serve_config_v2 != expected:
        diff = difflib.unified_diff(yaml.safe_dump(serve_config_v2).splitlines(),
                                    yaml.safe_dump(expected).splitlines(),
                                    "serveConfigV2", SERVE_CONFIG.name, lineterm="")
        pytest.fail("k8s/rayservice.yaml serveConfigV2 != serve_config.yaml:\n" + "\n".join(diff))


def test_serve_port_matches_the_serve_config(rayservice, serve_config_v2):
    head = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in head["ports"]}
    assert ports["serve"] == serve_config_v2["http_options"]["port"]
    assert serve_config_v2["http_options"]["host"] == "0.0.0.0"  # the pods' IPs, not loopback


# --- secrets ------------------------------------------------------------------------------------------

_TOKEN_PATTERNS = [
    re.compile(r"hf_[A-Za-z0-9]{20,}"),                                  # Hugging Face
    re.compile(r"\b(sk|pk|rk)-[A-Za-z0-9_-]{16,}"),                       # OpenAI-style API keys
    re.compile(r"\b(ghp|gho|ghs|ghu|github_pat)_[A-Za-z0-9_]{16,}"),      # GitHub
    re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),                        # Slack
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
]
_SECRETISH_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|API_?KEY|(^|_)KEY$", re.IGNORECASE)


def looks_like_secret(value: str) -> bool:
    """A known token format, or a long opaque string mixing letters and digits."""
    v = value.strip()
    if any(p.search(v) for p in _TOKEN_PATTERNS):
        return True
    return bool(len(v) >= 24 and re.fullmatch(r"[A-Za-z0-9_\-+=.]+", v)
                and re.search(r"[A-Za-z]", v) and re.search(r"\d", v))


@pytest.mark.parametrize(("value", "secret"), [
    ("hf_" + "aB3" * 12, True),
    ("sk-" + "x1" * 12, True),
    ("Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MA==", True),
    ("0", False),
    ("4,3,12,67108864", False),
    ("/models/huggingface", False),
    ("cub_caching", False),
])
def test_secret_heuristic(value, secret):
    assert looks_like_secret(value) is secret


def test_no_literal_secret_in_any_env_var(rayservice):
    for where, container in _containers(rayservice):
        for var in container.get("env", []):
            if "value" not in var:
                continue
            assert var["name"] not in SECRET_ENV, f"{where}: {var['name']} must come from the Secret"
            assert not _SECRETISH_NAME.search(var["name"]), f"{where}: {var['name']} has a literal value"
            assert not looks_like_secret(str(var["value"])), f"{where}: {var['name']} looks like a token"


def test_secrets_come_from_the_secret_on_every_ray_pod(rayservice):
    for group, container in _ray_containers(rayservice):
        env = {var["name"]: var for var in container.get("env", [])}
        for name, (key, optional) in SECRET_ENV.items():
            assert name in env, f"{group}: {name} missing"
            ref = env[name].get("valueFrom", {}).get("secretKeyRef")
            assert ref and "value" not in env[name], f"{group}: {name} must be a secretKeyRef"
            assert (ref["name"], ref["key"]) == (SECRET_NAME, key)
            assert bool(ref.get("optional", False)) is optional, f"{group}: {name} optional"
        assert not container.get("envFrom"), f"{group}: envFrom would bring in unnamed variables"


def test_no_secret_on_a_command_line(rayservice):
    """Kubernetes expands $(VAR) in command/args: a secret referenced there would be in `ps` output."""
    names = [*SECRET_ENV, *(key for key, _ in SECRET_ENV.values())]
    for where, container in _containers(rayservice):
        text = json.dumps([container.get("command"), container.get("args"), container.get("lifecycle"),
                           container.get("livenessProbe"), container.get("readinessProbe")])
        for name in names:
            assert name not in text, f"{where}: {name} appears in a command"
    for group, params in _group_start_params(rayservice):  # KubeRay turns these into `ray start` flags
        for flag, value in params.items():
            assert not looks_like_secret(value) and not any(n in value for n in names), f"{group}: {flag}"


def _has_gpu(group: dict[str, Any]) -> bool:
    return "nvidia.com/gpu" in group["template"]["spec"]["containers"][0]["resources"].get("limits", {})


def _group_start_params(rayservice) -> Iterator[tuple[str, dict[str, str]]]:
    cluster = rayservice["spec"]["rayClusterConfig"]
    yield "head", cluster["headGroupSpec"].get("rayStartParams", {})
    for group in cluster.get("workerGroupSpecs", []):
        yield group["groupName"], group.get("rayStartParams", {})


def test_no_secret_in_serve_config_v2(serve_config_v2):
    """Ray's dashboard shows the deployed config, runtime_env.env_vars included, verbatim."""
    for app in serve_config_v2["applications"]:
        for name, value in ((app.get("runtime_env") or {}).get("env_vars") or {}).items():
            assert name not in SECRET_ENV and not _SECRETISH_NAME.search(name), name
            assert not looks_like_secret(str(value)), name


def test_no_token_anywhere_in_the_k8s_files():
    for path in (MANIFEST, SECRET_EXAMPLE, REDIS, JOBS_PVC_EXAMPLE):
        text = path.read_text()
        assert not any(p.search(text) for p in _TOKEN_PATTERNS), path.name


def test_secret_example_holds_placeholders_for_every_referenced_key(rayservice):
    (secret,) = [d for d in yaml.safe_load_all(SECRET_EXAMPLE.read_text()) if d]
    assert (secret["kind"], secret["metadata"]["name"]) == ("Secret", SECRET_NAME)
    values = {**secret.get("stringData", {}), **secret.get("data", {})}
    assert values and all("REPLACE_ME" in v for v in values.values()), "placeholders only"
    redis_pods = [d["spec"]["template"]["spec"] for d in yaml.safe_load_all(REDIS.read_text())
                  if d and d["kind"] == "StatefulSet"]
    containers = [c for _, c in _containers(rayservice)] + [c for pod in redis_pods for c in pod["containers"]]
    refs = [var["valueFrom"]["secretKeyRef"] for c in containers for var in c.get("env", [])
            if "secretKeyRef" in var.get("valueFrom", {})]
    assert {ref["name"] for ref in refs} == {SECRET_NAME}, "one Secret for the service and its job store"
    assert {ref["key"] for ref in refs} == set(values)


# --- telemetry ----------------------------------------------------------------------------------------


def test_telemetry_is_off_in_every_container(rayservice):
    for where, container in _containers(rayservice):
        env = {var["name"]: var.get("value") for var in container.get("env", [])}
        for name, value in TELEMETRY_OFF.items():
            assert env.get(name) == value, f"{where}: {name} should be {value!r}, is {env.get(name)!r}"


# --- exposure -----------------------------------------------------------------------------------------


def _service_ports(spec: dict[str, Any]) -> list[Any]:
    return [v for p in spec.get("ports", []) for v in (p.get("port"), p.get("targetPort"), p.get("name"))]


def test_dashboard_is_not_exposed(documents, rayservice):
    dashboard = {DASHBOARD_PORT, "dashboard"}
    head_group = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]
    head_container = head_group["template"]["spec"]["containers"][0]
    head_ports = {p["name"]: p["containerPort"] for p in head_container["ports"]}
    assert head_ports.get("dashboard", DASHBOARD_PORT) == DASHBOARD_PORT
    assert int(head_group.get("rayStartParams", {}).get("dashboard-port", DASHBOARD_PORT)) == DASHBOARD_PORT

    # The head Service carries the dashboard port: it must stay inside the cluster.
    assert head_group.get("serviceType", "ClusterIP") == "ClusterIP"
    assert not head_group.get("enableIngress", False) and "ingressOptions" not in head_group
    head_service = head_group.get("headService", {})
    assert head_service.get("spec", {}).get("type", "ClusterIP") == "ClusterIP"

    # The serve Service is the one to expose: port 8000 only.
    serve_service = rayservice["spec"]["serveService"]["spec"]
    assert not dashboard & set(_service_ports(serve_service))
    assert {p["port"] for p in serve_service["ports"]} == {head_ports["serve"]}

    for doc in documents:
        if doc["kind"] == "Service":
            assert not dashboard & set(_service_ports(doc["spec"])), doc["metadata"]["name"]
        elif doc["kind"] == "Ingress":
            text = json.dumps(doc["spec"])
            assert f'"number": {DASHBOARD_PORT}' not in text and '"name": "dashboard"' not in text


def test_ray_token_auth_is_on(rayservice):
    cluster = rayservice["spec"]["rayClusterConfig"]
    assert cluster["authOptions"]["mode"] == "token"
    assert cluster["rayVersion"] == version("ray"), "rayVersion should be the Ray the image installs"


# --- scheduling, storage, shutdown --------------------------------------------------------------------


def test_head_runs_no_replicas_and_gpu_pods_have_one_gpu(rayservice):
    cluster = rayservice["spec"]["rayClusterConfig"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert cluster["enableInTreeAutoscaling"] is True
    gpu_groups = [g for g in cluster["workerGroupSpecs"] if _has_gpu(g)]
    assert gpu_groups, "no GPU worker group"
    for group in cluster["workerGroupSpecs"]:
        assert group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"]
    for group in gpu_groups:
        assert str(group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) == "1"


def test_model_directories_are_on_the_model_volume(rayservice, serve_config_v2):
    """Every absolute path in the model deployments' user_config is under a volume mount of the GPU pods,
    backed by the transcription-models claim."""
    paths = [v for app in serve_config_v2["applications"]
             for deployment in app.get("deployments", [])
             for v in (deployment.get("user_config") or {}).values()
             if isinstance(v, str) and v.startswith("/")]
    assert paths
    for group in rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        if not _has_gpu(group):
            continue
        pod = group["template"]["spec"]
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
                  for v in pod.get("volumes", []) if "persistentVolumeClaim" in v}
        mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0].get("volumeMounts", [])}
        assert claims.get(mounts.get("/models")) == "transcription-models"
        for path in paths:
            assert any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts), path


def _cpus(quantity: Any) -> float:
    """A Kubernetes CPU quantity ("12", "500m", 2) in cores."""
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _ingress_hosts(rayservice: dict[str, Any], serve_config_v2: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The pods a TranscriptionIngress replica fits on: Ray gives a pod the CPUs of rayStartParams num-cpus,
    else of its Ray container's limit."""
    (app,) = serve_config_v2["applications"]
    (ingress,) = [d for d in app["deployments"] if d["name"] == "TranscriptionIngress"]
    needed = float(ingress["ray_actor_options"]["num_cpus"])
    cluster = rayservice["spec"]["rayClusterConfig"]
    groups = [("head", cluster["headGroupSpec"])] + [(g["groupName"], g) for g in cluster["workerGroupSpecs"]]
    hosts = []
    for name, group in groups:
        pod = group["template"]["spec"]
        cpus = group.get("rayStartParams", {}).get("num-cpus", pod["containers"][0]["resources"]["limits"]["cpu"])
        if _cpus(cpus) >= needed:
            hosts.append((name, pod))
    return hosts


def test_job_args_are_serve_config_yamls_and_hold_no_store_url(serve_config_v2):
    """The cluster's job settings: the data dir on the mounted volume, and no store_url in the config (its
    password would show in Ray's dashboard): TRANSCRIPTION_JOB_STORE_URL from the Secret names the store."""
    from serve_app.settings import AppArgs

    (expected,) = yaml.safe_load(SERVE_CONFIG.read_text())["applications"]
    (app,) = serve_config_v2["applications"]
    jobs = app["args"]["jobs"]
    assert jobs == expected["args"]["jobs"]
    assert "store_url" not in jobs
    assert AppArgs.model_validate(app["args"]).jobs.data_dir == jobs["data_dir"] == "/var/lib/transcription"


def test_every_pod_that_can_run_the_ingress_mounts_the_job_volume(rayservice, serve_config_v2):
    """Any ingress replica may run a job whose upload another one accepted: each pod it fits on mounts the
    job claim at args.jobs.data_dir and reads the job store's URL and the callback key from the Secret."""
    (app,) = serve_config_v2["applications"]
    data_dir = app["args"]["jobs"]["data_dir"]
    hosts = _ingress_hosts(rayservice, serve_config_v2)
    assert {name for name, _ in hosts} == {"gpu", "cpu"}, "the head (num-cpus 0) runs no replica"
    for name, pod in hosts:
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
                  for v in pod.get("volumes", []) if "persistentVolumeClaim" in v}
        container = pod["containers"][0]
        mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
        assert data_dir in mounts, f"{name}: nothing mounted at {data_dir}"
        assert claims.get(mounts[data_dir]["name"]) == JOBS_CLAIM, f"{name}: {data_dir} is not the job claim"
        assert not mounts[data_dir].get("readOnly") and not mounts[data_dir].get("subPath"), name
        env = {var["name"]: var.get("valueFrom", {}).get("secretKeyRef") for var in container.get("env", [])}
        for var in ("TRANSCRIPTION_JOB_STORE_URL", "TRANSCRIPTION_CALLBACK_SECRET"):
            assert env.get(var) and env[var]["name"] == SECRET_NAME, f"{name}: {var} not from the Secret"


def test_ingress_hosts_follow_the_pods_cpus(rayservice, serve_config_v2):
    """The check above is not vacuous: a head that offered CPUs would be a pod that has to mount the volume."""
    head_with_cpus = copy.deepcopy(rayservice)
    head_with_cpus["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = "2"
    assert "head" in {name for name, _ in _ingress_hosts(head_with_cpus, serve_config_v2)}
    assert _cpus("500m") == 0.5 and _cpus(12) == 12


def test_worker_pods_outlast_the_slowest_graceful_shutdown(rayservice, serve_config_v2):
    slowest = max(d.get("graceful_shutdown_timeout_s", 20)
                  for app in serve_config_v2["applications"] for d in app.get("deployments", []))
    for group in rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        grace = group["template"]["spec"].get("terminationGracePeriodSeconds", 30)
        assert grace > slowest, f"{group['groupName']}: {grace} s <= {slowest} s"
