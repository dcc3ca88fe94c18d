"""serve_config.yaml (production, GPU) and serve_config.cpu.yaml (the embedded default, 2 CPU cores):
both are valid Serve configs whose `args` the app accepts, every model setting sits in its deployment's
`user_config` (swapped in place on `serve deploy`), the CPU profile asks for no GPU and fits two cores, and
the production profile gives each model deployment its GPU share and scales it on queued audio.

Checked without starting Ray: Ray's own `ServeDeploySchema` for the file, the app's own `AppArgs` (and
`build_app`) for `args`, each config class for its `user_config`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PRODUCTION = REPO / "serve_config.yaml"
CPU = REPO / "serve_config.cpu.yaml"
CONFIGS = [PRODUCTION, CPU]

IMPORT_PATH = "serve_app.app:build_app"
CPU_BUDGET = 2.0  # cores of the machine the CPU profile is sized for
PRODUCTION_GPU_SHARES = {"AsrDeployment": 0.4, "AlignmentDeployment": 0.2, "DiarizationDeployment": 0.3}
MODEL_DEPLOYMENTS = tuple(PRODUCTION_GPU_SHARES)
# Serve's defaults for what a deployment entry leaves out.
DEFAULT_NUM_CPUS = 1.0
DEFAULT_NUM_REPLICAS = 1


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def deployments(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (app,) = config["applications"]
    return {d["name"]: d for d in app.get("deployments", [])}


def max_replicas(deployment: dict[str, Any]) -> int:
    """The most replicas this entry can run: autoscaling's max_replicas, else num_replicas."""
    if deployment.get("autoscaling_config"):
        return int(deployment["autoscaling_config"]["max_replicas"])
    replicas = deployment.get("num_replicas", DEFAULT_NUM_REPLICAS)
    assert replicas != "auto", f"{deployment['name']}: num_replicas 'auto' has no fixed upper bound here"
    return int(replicas)


def num_cpus(deployment: dict[str, Any]) -> float:
    return float((deployment.get("ray_actor_options") or {}).get("num_cpus", DEFAULT_NUM_CPUS))


def gpu_requests(deployment: dict[str, Any]) -> list[tuple[str, Any]]:
    """Everything in one deployment entry that would ask Ray for a GPU."""
    found: list[tuple[str, Any]] = []
    options = deployment.get("ray_actor_options") or {}
    if options.get("num_gpus"):
        found.append(("ray_actor_options.num_gpus", options["num_gpus"]))
    if options.get("accelerator_type"):
        found.append(("ray_actor_options.accelerator_type", options["accelerator_type"]))
    for name, amount in (options.get("resources") or {}).items():
        if re.search(r"gpu|accelerator|tpu", name, re.IGNORECASE) and amount:
            found.append((f"ray_actor_options.resources.{name}", amount))
    for i, bundle in enumerate(deployment.get("placement_group_bundles") or []):
        if bundle.get("GPU"):
            found.append((f"placement_group_bundles[{i}].GPU", bundle["GPU"]))
    return found


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_is_a_valid_serve_config(path):
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(load(path))
    (app,) = schema.applications
    assert app.import_path == IMPORT_PATH, "one import_path for every profile"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_args_are_accepted_by_the_app(path):
    """`args` validate with the app's own validator, as build_app does first."""
    from serve_app.settings import AppArgs

    (app,) = load(path)["applications"]
    AppArgs.model_validate(app["args"])


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_build_app_builds_every_configured_deployment(path):
    """build_app binds the graph (no Ray cluster needed), and every deployment the config sizes is one it
    builds: a misspelt entry would fail only at deploy time."""
    from ray.serve._private.build_app import build_app as build_serve_app

    from serve_app.app import build_app

    (app,) = load(path)["applications"]
    built = build_serve_app(build_app(app["args"]), name=app["name"])
    assert set(deployments(load(path))) <= {d.name for d in built.deployments}
    assert built.ingress_deployment_name == "TranscriptionIngress"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_model_deployment_has_its_settings_in_user_config(path):
    """The one place for a model setting: the deployment's user_config, valid for its config class."""
    from serve_app.app import MODEL_DEPLOYMENTS as CLASSES

    by_name = deployments(load(path))
    for name in MODEL_DEPLOYMENTS:
        assert "user_config" in by_name[name], f"{name} has no user_config in {path.name}"
        CLASSES[name].config_cls.model_validate(by_name[name]["user_config"])


@pytest.mark.parametrize("part", ["asr", "alignment", "diarization"])
def test_model_settings_under_args_are_refused_and_say_where_they_go(part):
    from pydantic import ValidationError

    from serve_app.app import build_app

    with pytest.raises(ValidationError, match=rf"model settings do not go in args \(`{part}` -> the user_config"):
        build_app({part: {"device": "cpu"}})


@pytest.mark.parametrize(("args", "key"), [
    ({"ingress": {"subtitles": {"max_line_char": 30}}}, "ingress.subtitles.max_line_char"),
    ({"ingress": {"max_upload_mb": 30}}, "ingress.max_upload_mb"),
    ({"asrr": {}}, "asrr"),
])
def test_a_misspelt_key_fails_the_build_and_names_the_key(args, key):
    from pydantic import ValidationError

    from serve_app.app import build_app

    with pytest.raises(ValidationError, match=rf"{key}\n\s+Extra inputs are not permitted"):
        build_app(args)


@pytest.mark.parametrize("config_class", ["asr.AsrDeploymentConfig", "alignment.AlignmentConfig",
                                          "diarization.DiarizationConfig"])
def test_a_misspelt_user_config_key_fails_the_reconfigure_and_names_the_key(config_class):
    """A `user_config` override in serve_config.yaml reaches the replica's reconfigure, which refuses it
    before touching the model (Serve then reports the deploy as failed, with this message)."""
    import asyncio
    import importlib

    from deployments.replica import ModelReplica

    module, name = config_class.split(".")
    cls = getattr(importlib.import_module(f"deployments.{module}"), name)

    class Replica(ModelReplica):
        config_cls = cls

    with pytest.raises(ValueError, match=r"invalid user_config for Replica(.|\n)*modle\n\s+Extra inputs"):
        asyncio.run(Replica(holder_factory=lambda spec: None).reconfigure({"modle": "x"}))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_no_secret_in_runtime_env(path):
    """Ray's dashboard shows runtime_env.env_vars verbatim: tokens come from the process environment."""
    for app in load(path)["applications"]:
        env_vars = (app.get("runtime_env") or {}).get("env_vars") or {}
        assert not [n for n in env_vars if re.search(r"TOKEN|SECRET|PASSWORD|API_?KEY", n, re.IGNORECASE)]
        assert env_vars.get("PYANNOTE_METRICS_ENABLED") == "0"
        assert env_vars.get("HF_HUB_DISABLE_TELEMETRY") == "1"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_job_chunks_leave_the_asr_replicas_room_for_interactive_chunks(path):
    """A job's chunks in flight are at most half of what the ASR deployment takes beside a batch decoding, so
    chunks of interactive requests always find a slot; and no store URL in the file (one with a password would
    show in Ray's dashboard; it comes from TRANSCRIPTION_JOB_STORE_URL)."""
    from serve_app.settings import AppArgs

    config = load(path)
    (app,) = config["applications"]
    jobs = AppArgs.model_validate(app["args"]).jobs
    asr = deployments(config)["AsrDeployment"]
    spare = asr["max_ongoing_requests"] - asr["user_config"]["batch_size"]
    assert 1 <= jobs.max_chunks_in_flight <= spare / 2, (jobs.max_chunks_in_flight, spare)
    assert jobs.store_url is None


def test_cpu_profile_keeps_jobs_in_the_default_data_dir():
    """The embedded default names no data dir: jobs go to $TRANSCRIPTION_DATA_DIR or the user's data folder."""
    (app,) = load(CPU)["applications"]
    assert "data_dir" not in app["args"]["jobs"]
    assert app["args"]["jobs"]["max_upload_mib"] == 1024


# --- the CPU profile ----------------------------------------------------------------------------------


def test_cpu_profile_asks_for_no_gpu():
    config = load(CPU)
    for name, deployment in deployments(config).items():
        assert gpu_requests(deployment) == [], name
    for name in MODEL_DEPLOYMENTS:
        assert deployments(config)[name]["user_config"]["device"] == "cpu", name


def test_cpu_profile_fits_two_cores():
    """At most CPU_BUDGET cores reserved with every deployment at its most replicas. Every deployment the
    app builds must be listed: one left out would reserve Serve's default of a whole CPU per replica."""
    config = deployments(load(CPU))
    assert set(config) == {"TranscriptionIngress", *PRODUCTION_GPU_SHARES}
    shares = {name: num_cpus(d) * max_replicas(d) for name, d in config.items()}
    assert all(share > 0 for share in shares.values()), shares
    assert sum(shares.values()) <= CPU_BUDGET, shares


# --- the production profile ---------------------------------------------------------------------------


def test_production_gpu_shares():
    config = load(PRODUCTION)
    by_name = deployments(config)
    for name, share in PRODUCTION_GPU_SHARES.items():
        assert by_name[name]["ray_actor_options"]["num_gpus"] == pytest.approx(share), name
    assert gpu_requests(by_name["TranscriptionIngress"]) == [], "the ingress holds no model"
    # One replica of each model fits one GPU.
    assert sum(PRODUCTION_GPU_SHARES.values()) <= 1.0
    for name in MODEL_DEPLOYMENTS:
        assert by_name[name]["user_config"]["device"].startswith("cuda"), name


def test_production_model_deployments_scale_on_queued_audio():
    """Each model deployment's autoscaling policy is the queued-audio one, with a target it accepts; the
    ingress scales on requests (Serve's default policy); diarization may scale to zero."""
    from ray.serve.config import AutoscalingConfig

    from core.autoscaling import QueuedAudioPolicy

    by_name = deployments(load(PRODUCTION))
    for name in MODEL_DEPLOYMENTS:
        autoscaling = AutoscalingConfig.model_validate(by_name[name]["autoscaling_config"])
        assert autoscaling.policy.policy_function == "core.autoscaling:QueuedAudioPolicy", name
        QueuedAudioPolicy(**autoscaling.policy.policy_kwargs)
    ingress = AutoscalingConfig.model_validate(by_name["TranscriptionIngress"]["autoscaling_config"])
    assert ingress.policy.is_default_policy_function()
    assert by_name["DiarizationDeployment"]["autoscaling_config"]["min_replicas"] == 0


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_pass_the_deploy_check(path):
    from serve_app.app import check_config
    from serve_app.launch import load_config

    check_config(load_config(path))


def test_the_check_command_names_a_misspelt_user_config_key(tmp_path, capsys):
    """`python -m serve_app.launch --check FILE`, run before `serve deploy`, refuses an override that the
    running replicas would refuse (Serve would then stop them)."""
    from serve_app.launch import main

    config = load(CPU)
    [asr] = [d for d in config["applications"][0]["deployments"] if d["name"] == "AsrDeployment"]
    asr["user_config"] = {"default_model": "tiny.en", "max_loaded_modles": 3}
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main([str(path), "--check"]) == 1
    assert "AsrDeployment user_config" in capsys.readouterr().err
    assert main([str(CPU), "--check"]) == 0
