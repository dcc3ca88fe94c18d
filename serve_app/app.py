"""`build_app`: the one import_path for `serve run`, `serve deploy` and KubeRay's serveConfigV2.

    serve_app.app:build_app   args: AppArgs (see serve_app/settings.py)

serve_config.yaml sets, per deployment, replicas, CPU/GPU shares, autoscaling and, for the model
deployments, the `user_config` that holds every model setting (serve_app/settings.py says why there).
The code's own `user_config` is each config class's defaults, the embedded CPU profile's models.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError
from ray import serve
from ray.serve import Application

from deployments.alignment import AlignmentDeployment
from deployments.asr import AsrDeployment
from deployments.diarization import DiarizationDeployment
from deployments.replica import ModelReplica
from serve_app.ingress import TranscriptionIngress
from serve_app.settings import AppArgs

IMPORT_PATH = "serve_app.app:build_app"

MODEL_DEPLOYMENTS: dict[str, type[ModelReplica]] = {cls.__name__: cls for cls in (AsrDeployment, AlignmentDeployment,
                                                                   DiarizationDeployment)}
"""The model deployments by their Serve name; each names its `user_config` class as `config_cls`."""


def build_app(args: dict[str, Any]) -> Application:
    """Validate `args` and bind the deployment graph: ingress → ASR, alignment, diarization."""
    return build_graph(AppArgs.model_validate(args or {}))


def build_graph(app_args: AppArgs, holders: Mapping[str, Callable[..., Any]] | None = None,
                **deployment_options: Any) -> Application:
    """The graph `build_app` serves. `holders` binds a holder factory to a model deployment by name (tests
    bind fakes through the constructors); `deployment_options` go to every `serve.deployment`."""
    holders = holders or {}

    def model_deployment(cls: type[ModelReplica]) -> Application:
        # Replicas, resources, autoscaling and the user_config an operator sets come from serve_config.yaml.
        defaults: BaseModel = cls.config_cls()
        deployment = serve.deployment(name=cls.__name__, user_config=defaults.model_dump(mode="json"),
                                      **deployment_options)(cls)
        factory = holders.get(cls.__name__)
        return deployment.bind(holder_factory=factory) if factory is not None else deployment.bind()

    asr = model_deployment(AsrDeployment)
    alignment = model_deployment(AlignmentDeployment)
    diarization = model_deployment(DiarizationDeployment) if app_args.diarization_enabled else None
    ingress = serve.deployment(name="TranscriptionIngress", **deployment_options)(TranscriptionIngress)
    return ingress.bind(asr, alignment, diarization, app_args.model_dump(mode="json"))


def check_config(config: Any) -> None:
    """Refuse a Serve config (a `ServeDeploySchema`) whose `args` or model `user_config` overrides this app
    would reject, naming the key, before any of it reaches a running replica.

    Serve applies a deployment's `user_config` by calling `reconfigure` on the running replicas, and
    treats a reconfigure that raises as a failed replica: it stops the one serving and leaves none.
    """
    problems = []
    for app in config.applications:
        if app.import_path == IMPORT_PATH:
            try:
                AppArgs.model_validate(app.args or {})
            except ValidationError as e:
                problems.append(f"application {app.name!r}, args: {e}")
        for deployment in app.deployments:
            cls = MODEL_DEPLOYMENTS.get(deployment.name)
            user_config = deployment.model_dump(exclude_unset=True).get("user_config")
            if cls is None or user_config is None:
                continue
            try:
                cls.config_cls.model_validate(user_config)
            except ValidationError as e:
                problems.append(f"application {app.name!r}, {deployment.name} user_config: {e}")
    if problems:
        raise ValueError("invalid serve config:\n" + "\n".join(problems))
