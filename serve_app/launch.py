"""Run the service from a Serve config file in the foreground, with a clean shutdown on Ctrl+C and SIGTERM.

    python -m serve_app.launch [serve_config.cpu.yaml]

It deploys the config exactly as `serve run CONFIG` does (Ray's own `ServeDeploySchema`, the same
controller call), prints where to send requests once the app is running, and on SIGINT or SIGTERM
shuts Serve down gracefully, so every replica runs its teardown and logs its report. (`serve run`
itself dies at once on SIGTERM, which is what containers and systemd send.)
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import yaml

# Before Ray starts: replicas inherit the driver's environment on a local cluster.
_ENV_DEFAULTS = {
    "PYANNOTE_METRICS_ENABLED": "0",  # pyannote.audio 4 reports usage to an outside endpoint by default
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
}

_SINGLE_MACHINE_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's single-machine mode (init_ray)

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "serve_config.cpu.yaml"


def load_config(path: str | Path):
    """Read a Serve config file and validate it with Ray's own schema."""
    from ray.serve.schema import ServeDeploySchema

    return ServeDeploySchema.model_validate(yaml.safe_load(Path(path).read_text()))


def is_loopback(host: str) -> bool:
    """Whether an HTTP host (an IP or a name) reaches this machine only."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def init_ray(*, loopback_only: bool, runtime_env: dict[str, Any] | None = None) -> None:
    """Join the Ray cluster that `ray.init` finds (RAY_ADDRESS, one started by `ray start`) or start a
    local one, in Serve's namespace; a local one started with `loopback_only` listens on 127.0.0.1 only."""
    import ray
    from ray._private import ray_constants, services
    from ray.serve._private.constants import SERVE_NAMESPACE

    for key, value in _ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    # ray.init's own rule for when it starts a new cluster, asked after RAY_ADDRESS (a client's
    # "ray://..." address fails it). Its hint says str; ray.init passes None.
    starts_local = not os.environ.get("RAY_ADDRESS") and (
        services.canonicalize_bootstrap_address(None) is None)  # type: ignore[arg-type]
    if not (loopback_only and starts_local):
        ray.init(namespace=SERVE_NAMESPACE, runtime_env=runtime_env)
        return
    # Ray's servers (GCS, raylet, object manager, each worker's gRPC port, the agents, the metrics
    # exporters) bind every interface unless the node's IP is 127.0.0.1, and on Linux the node's IP
    # is the outward interface's: ray.init(_node_ip_address="127.0.0.1") is turned back into it.
    # Ray's single-machine mode, its default on macOS and Windows (ray-project/ray#18730), takes
    # 127.0.0.1. Its switch is read when ray is imported, which has happened by now: set it for the
    # processes ray.init starts and for this one, while it runs.
    saved_env, saved_mode = os.environ.get(_SINGLE_MACHINE_SWITCH), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_SINGLE_MACHINE_SWITCH] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(namespace=SERVE_NAMESPACE, runtime_env=runtime_env)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_mode
        if saved_env is None:
            del os.environ[_SINGLE_MACHINE_SWITCH]
        else:
            os.environ[_SINGLE_MACHINE_SWITCH] = saved_env


def deploy(config, *, timeout_s: float = 600) -> str:
    """Deploy a validated config onto the connected (or a new local) Ray cluster; returns the base URL.

    A new local cluster listens on loopback only when the config's HTTP host is a loopback one.

    Refuses (ValueError naming the key) a config whose args or user_config overrides the app would
    reject, before anything is deployed: the running replicas keep serving.
    """
    import ray
    from ray.serve._private import api as serve_api  # what `serve run CONFIG` uses

    from serve_app.app import check_config

    check_config(config)

    if not ray.is_initialized():
        init_ray(loopback_only=is_loopback(config.http_options.host))
    client = serve_api.serve_start(
        http_options=config.http_options.model_dump(),
        proxy_location=config.proxy_location,
        global_logging_config=config.logging_config,
    )
    client.deploy_apps(config, _blocking=False)
    wait_until_running([app.name for app in config.applications], timeout_s=timeout_s)
    host = config.http_options.host
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{host}:{config.http_options.port}"


def wait_until_running(app_names: list[str], *, timeout_s: float) -> None:
    """Block until every named app is RUNNING; raise with Serve's message if one fails."""
    from ray import serve
    from ray.serve.schema import ApplicationStatus

    deadline = time.monotonic() + timeout_s
    while True:
        statuses = serve.status().applications
        states = {name: statuses[name].status if name in statuses else None for name in app_names}
        failed = [n for n, s in states.items() if s == ApplicationStatus.DEPLOY_FAILED]
        if failed:
            app = statuses[failed[0]]
            # The application's message names only the deployments; theirs say what went wrong.
            reasons = [f"{name}: {d.message}" for name, d in app.deployments.items() if d.message]
            raise RuntimeError(f"deploying {failed[0]} failed: {app.message}" + "".join(f"\n{r}" for r in reasons))
        if all(s == ApplicationStatus.RUNNING for s in states.values()):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"apps not running after {timeout_s:.0f} s: {states}")
        time.sleep(1)


def _shutdown(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default=str(DEFAULT_CONFIG), help="Serve config file")
    parser.add_argument("--check", action="store_true", help="only validate the config (Ray's schema, the "
                        "app's args and every model user_config) and exit: run it before `serve deploy`")
    options = parser.parse_args(argv)
    if options.check:
        from serve_app.app import check_config

        try:
            check_config(load_config(options.config))
        except ValueError as e:  # pydantic's ValidationError is one
            print(e, file=sys.stderr)
            return 1
        print(f"{options.config}: ok")
        return 0
    from ray import serve

    try:
        url = deploy(load_config(options.config))
        # After Ray starts: its core worker installs a SIGTERM handler that exits at once. SIGINT too,
        # explicitly: a process started from a background job (nohup, `cmd &` in a script) inherits
        # SIGINT as ignored, and Python then installs no KeyboardInterrupt handler of its own.
        signal.signal(signal.SIGTERM, _shutdown)
        signal.signal(signal.SIGINT, _shutdown)
        print(f"\nTranscription service is up: {url}/v1/audio/transcriptions  (models: {url}/v1/models)",
              flush=True)
        print("Stop with Ctrl+C.", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        # A second signal (a supervisor repeating SIGTERM, Ctrl+C pressed twice) must not interrupt
        # the teardown half-way: ignore it until Serve has stopped.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("\nShutting down: tearing down models...", flush=True)
        serve.shutdown()
        import ray

        ray.shutdown()
        print("Stopped.", flush=True)
        return 0


if __name__ == "__main__":
    sys.exit(main())
