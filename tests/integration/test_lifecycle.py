"""Model swaps under load, and replacement of a replica whose teardown kept memory."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from deployments.asr import AsrDeploymentConfig
from tests import speech
from tests.integration.conftest import ROOT, paragraph, paragraph_wav, transcribe

pytestmark = pytest.mark.serve


def serving_source(client) -> str:
    """Where the default model's weights come from, as the ASR deployment serves it now."""
    [default] = [m for m in client.get("/v1/models").json()["data"] if m.get("default")]
    return default["source"]


def asr_replica(client) -> dict:
    [replica] = client.get("/v1/models/status").json()["deployments"]["asr"]["replicas"]
    return replica


def redeploy(asr_model: str | None = None, leaky_model: str | None = None) -> None:
    """Deploy serve_config.cpu.yaml again, as `serve deploy` would; `asr_model` replaces the weights
    behind the default model id (the in-place swap an operator makes), None keeps the file's config."""
    from ray.serve.schema import ServeApplicationSchema

    from serve_app.launch import deploy, load_config

    config = load_config(ROOT / "serve_config.cpu.yaml")
    config.http_options.port = 8765
    if asr_model is not None:
        [asr] = [d for d in config.applications[0].deployments if d.name == "AsrDeployment"]
        current = AsrDeploymentConfig.model_validate(asr.user_config)
        asr.user_config = current.model_copy(update={"models": {**current.models, current.default_model: asr_model}}) \
            .model_dump(mode="json")
    if leaky_model is not None:
        from tests.integration.leaky import LeakyConfig

        config.applications.append(ServeApplicationSchema.model_validate({
            "name": "leaky", "route_prefix": "/leaky", "import_path": "tests.integration.leaky:build",
            "deployments": [{
                "name": "LeakyDeployment", "health_check_period_s": 1, "ray_actor_options": {"num_cpus": 0.1},
                "user_config": LeakyConfig(model=leaky_model, rss_residue_budget_mib=64).model_dump(mode="json"),
            }],
        }))
    deploy(config)


def test_model_swaps_under_load_fail_no_request(client):
    outcomes: Counter[str] = Counter()
    stop = threading.Event()

    def keep_asking() -> None:
        while not stop.is_set():
            response = transcribe(client, paragraph_wav())
            ok = response.status_code == 200 and speech.word_error_rate(paragraph()[1], response.json()["text"]) < 0.2
            outcomes["ok" if ok else f"{response.status_code}: {response.text[:200]}"] += 1

    replica_before = asr_replica(client)["replica"]
    workers = [threading.Thread(target=keep_asking) for _ in range(3)]
    for worker in workers:
        worker.start()
    try:
        for model in ("bundled/base", "bundled/tiny.en"):
            before = outcomes["ok"]
            redeploy(asr_model=model)
            deadline = time.monotonic() + 300
            while serving_source(client) != model:
                assert time.monotonic() < deadline, f"{model} not serving after 300 s"
                time.sleep(1)
            while outcomes["ok"] < before + 3:  # requests keep succeeding on the new model
                assert time.monotonic() < deadline
                time.sleep(0.5)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    print(f"outcomes across two swaps: {dict(outcomes)}")
    assert set(outcomes) == {"ok"}, outcomes

    asr = asr_replica(client)
    assert asr["replica"] == replica_before, "the model was swapped inside the running replica"
    report = asr["last_teardown"]
    assert asr["loaded"]["tiny.en"]["model"] == "bundled/tiny.en" and report["model"] == "bundled/base"
    assert [u["reason"] for u in asr["unloads"][:2]] == ["replaced", "replaced"]
    assert report["freed_bytes"] > 0 and asr["healthy"]
    redeploy()  # the file's own config again, for the tests after this one


def test_replica_whose_teardown_keeps_memory_is_replaced(client):
    from ray import serve

    redeploy(leaky_model="first")
    handle = serve.get_deployment_handle("LeakyDeployment", app_name="leaky")
    first = handle.status.remote().result()
    assert first["healthy"] and first["model"] == "first" and first["last_teardown"] is None

    # Only the user_config changes: the running replica tears "first" down, keeps its memory, and
    # its health check fails against the 64 MiB budget; Serve replaces it.
    redeploy(leaky_model="second")
    deadline = time.monotonic() + 180
    while True:
        status = handle.status.remote().result()
        if status["replica_pid"] != first["replica_pid"]:
            break
        if status["last_teardown"] is not None:
            assert not status["healthy"] and status["last_teardown"]["residue_bytes"] > 200 * 1024 * 1024
        assert time.monotonic() < deadline, f"replica not replaced: {status}"
        time.sleep(0.5)
    # The replacement loaded the new model once, with nothing torn down yet: healthy.
    assert status["model"] == "second" and status["healthy"] and status["last_teardown"] is None
    redeploy()  # back to the one app
    assert client.get("/leaky").status_code == 404
