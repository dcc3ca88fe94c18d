"""The fake app (tests/serve/fake_app.py) deployed under a Ray of the test's own, as `serve deploy` and
serve_app.launch deploy it: a Serve config with an import_path, through the controller."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
APP = "transcription"
ASR_USER_CONFIG = {"models": {"tiny.en": "fake/tiny.en", "base": "fake/base"}, "default_model": "tiny.en"}
USER_CONFIGS = {"AsrDeployment": ASR_USER_CONFIG, "AlignmentDeployment": {"models": {"en": "fake/align-en"}},
                "DiarizationDeployment": {"model": "embedded"}}
"""The model settings, each in its deployment's user_config, as in serve_config.yaml."""
WAIT_S = 60

# Timing only, for a bare Ray on two cores: a replica that fails to start is not tried three times.
RAY_ENV = {"RAY_SERVE_MAX_PER_REPLICA_RETRY_COUNT": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_config(port: int, asr_user_config: dict[str, Any] | None = None,
                 asr_options: dict[str, Any] | None = None, options: dict[str, dict[str, Any]] | None = None,
                 args: dict[str, Any] | None = None):
    """The Serve config of the fake app; `asr_user_config` replaces the ASR deployment's, as an operator's
    edited serve_config.yaml would, `asr_options` are its deployment options (num_replicas, ...),
    `options` any deployment's, by name, and `args` the app's."""
    from ray.serve.schema import ServeDeploySchema

    user_configs = {**USER_CONFIGS, **({"AsrDeployment": asr_user_config} if asr_user_config is not None else {})}
    options = {name: dict(values) for name, values in (options or {}).items()}
    options.setdefault("AsrDeployment", {}).update(asr_options or {})
    names = dict.fromkeys([*user_configs, *options])
    deployments = [{"name": name, **({"user_config": user_configs[name]} if name in user_configs else {}),
                    **options.get(name, {})} for name in names]
    app: dict[str, Any] = {"name": APP, "route_prefix": "/", "import_path": "tests.serve.fake_app:build",
                           "args": args or {}, "deployments": deployments}
    return ServeDeploySchema.model_validate({
        "proxy_location": "HeadOnly", "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [app]})


@contextmanager
def fake_app_served(port: int, env: dict[str, str] | None = None,
                    asr_options: dict[str, Any] | None = None,
                    options: dict[str, dict[str, Any]] | None = None,
                    args: dict[str, Any] | None = None) -> Iterator[str]:
    """Start a Ray, deploy the fake app on `port` and yield its base URL; Serve and Ray are shut down after.
    `env` goes to every replica's environment, `asr_options` to the ASR deployment's options, `options`
    to any deployment's, `args` to the app."""
    import ray
    from ray import serve
    from ray.serve._private.constants import SERVE_NAMESPACE

    from serve_app.launch import deploy

    # address="local": a Ray of our own, never a cluster someone started on this machine. PYTHONPATH:
    # the replicas import tests.serve.fake_app from this checkout.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, namespace=SERVE_NAMESPACE,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), **RAY_ENV, **(env or {})}})
    try:
        yield deploy(serve_config(port, asr_options=asr_options, options=options, args=args), timeout_s=WAIT_S)
    finally:
        serve.shutdown()
        ray.shutdown()


def multipart(*parts: tuple[str, str | None, bytes], boundary: str = "b0undary") -> bytes:
    """A multipart body built by hand: (field name, filename or None, content) per part."""
    out = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()
