"""`build_app`: the one import_path for `serve run`, `serve deploy` and KubeRay's serveConfigV2.

    serve_app.app:build_app   args: AppArgs (see serve_app/settings.py)

Each model deployment gets its `user_config` from `args`; serve_config.yaml sets replicas, CPU/GPU
shares and autoscaling per deployment, and may override `user_config` there too.
"""

from __future__ import annotations

from typing import Any

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
    asr = serve.deployment(AsrDeployment).options(
        user_config=app_args.asr.model_dump(mode="json")).bind()
    alignment = serve.deployment(AlignmentDeployment).options(
        user_config=app_args.alignment.model_dump(mode="json")).bind()
    diarization = None
    if app_args.diarization_enabled:
        diarization = serve.deployment(DiarizationDeployment).options(
            user_config=app_args.diarization.model_dump(mode="json")).bind()
    ingress = serve.deployment(TranscriptionIngress)
    return ingress.bind(asr, alignment, diarization, app_args.model_dump(mode="json"))
