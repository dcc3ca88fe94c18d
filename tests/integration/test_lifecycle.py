"""Model swaps under load, and replacement of a replica whose teardown kept memory."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from deployments.asr import AsrConfig
from tests import speech
from tests.integration.conftest import ROOT, paragraph, paragraph_wav, transcribe

pytestmark = pytest.mark.serve


def serving_model(client) -> str:
    return client.get("/v1/models").json()["data"][0]["id"]


def swap_asr_model(model: str) -> None:
    """Re-deploy serve_config.cpu.yaml with a new AsrDeployment user_config, as `serve deploy` would."""
    from serve_app.launch import deploy, load_config

    config = load_config(ROOT / "serve_config.cpu.yaml")
    config.http_options.port = 8765
    [asr] = [d for d in config.applications[0].deployments if d.name == "AsrDeployment"]
    asr.user_config = AsrConfig(model=model, cpu_threads=2).model_dump(mode="json")
    deploy(config)


def test_model_swaps_under_load_fail_no_request(client):
    outcomes: Counter[str] = Counter()
    stop = threading.Event()

    def keep_asking() -> None:
        while not stop.is_set():
            response = transcribe(client, paragraph_wav())
            ok = response.status_code == 200 and speech.word_error_rate(paragraph()[1], response.json()["text"]) < 0.2
            outcomes["ok" if ok else f"{response.status_code}: {response.text[:200]}"] += 1

    workers = [threading.Thread(target=keep_asking) for _ in range(3)]
    for worker in workers:
        worker.start()
    try:
        for model in ("bundled/base", "bundled/tiny.en"):
            before = outcomes["ok"]
            swap_asr_model(model)
            deadline = time.monotonic() + 300
            while serving_model(client) != model:
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

    [asr] = client.get("/v1/models/status").json()["deployments"]["asr"]["replicas"]
    report = asr["last_teardown"]
    assert asr["model"] == "bundled/tiny.en" and report["model"] == "bundled/base"
    assert report["freed_bytes"] > 0 and asr["healthy"]


def test_replica_whose_teardown_keeps_memory_is_replaced(base_url):
    from ray import serve

    from tests.integration.leaky import LeakyConfig, LeakyDeployment

    def deploy(model: str):
        config = LeakyConfig(model=model, rss_residue_budget_mib=64).model_dump(mode="json")
        app = serve.deployment(LeakyDeployment, name="LeakyDeployment", user_config=config,
                               health_check_period_s=1, health_check_timeout_s=10,
                               ray_actor_options={"num_cpus": 0.1}).bind()
        return serve.run(app, name="leaky", route_prefix="/leaky")

    handle = deploy("first")
    first = handle.status.remote().result()
    assert first["healthy"] and first["model"] == "first"

    deploy("second")  # only user_config changed: Serve reconfigures the running replica in place
    deadline = time.monotonic() + 120
    while True:
        status = handle.status.remote().result()
        if status["replica_pid"] != first["replica_pid"]:
            break
        assert time.monotonic() < deadline, f"replica not replaced: {status}"
        time.sleep(1)
    # The replacement loaded the new model once, with nothing torn down yet: healthy.
    assert status["model"] == "second" and status["healthy"] and status["last_teardown"] is None
    serve.delete("leaky")
