"""`build_app`: the one import_path for `serve run`, `serve deploy` and KubeRay's serveConfigV2.

    serve_app.app:build_app   args: AppArgs (see serve_app/settings.py)

Each model deployment gets its `user_config` from `args`; serve_config.yaml sets replicas, CPU/GPU
shares and autoscaling per deployment, and may override `user_config` there too.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from ray import serve
from ray.serve import Application

from deployments.alignment import AlignmentDeployment
from deployments.asr import AsrDeployment
from deployments.diarization import DiarizationDeployment
from serve_app.ingress import TranscriptionIngress
from serve_app.settings import AppArgs


def build_app(args: dict[str, Any]) -> Application:
    """Validate `args` and bind the deployment graph: ingress → ASR, alignment, diarization."""
    app_args = AppArgs.model_validate(args or {})

    def model_deployment(cls: type, config: BaseModel) -> Application:
        # Code sets only the user_config; replicas, resources and autoscaling come from serve_config.yaml.
        return serve.deployment(name=cls.__name__, user_config=config.model_dump(mode="json"))(cls).bind()

    asr = model_deployment(AsrDeployment, app_args.asr)
    alignment = model_deployment(AlignmentDeployment, app_args.alignment)
    diarization = model_deployment(DiarizationDeployment, app_args.diarization) if app_args.diarization_enabled \
        else None
    ingress = serve.deployment(name="TranscriptionIngress")(TranscriptionIngress)
    return ingress.bind(asr, alignment, diarization, app_args.model_dump(mode="json"))
