"""Autoscaling on queued audio under a real Ray Serve, with fake holders: a queue of audio at the ASR
deployment adds a replica (1 -> 2) and an idle period takes it away again; a diarized request to a
diarization deployment scaled to zero waits for a replica to start, and the ingress says so in its log.

The replicas report their audio every RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S (1 s here,
10 s by default) and the delays are short, so that it all happens within a minute on two cores; the policy
and the code paths are the production ones (core.autoscaling:QueuedAudioPolicy).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.serve.fake_app import DELAY_ENV
from tests.serve.served import APP, fake_app_served, free_port
from tests.speech import to_wav_bytes

pytestmark = [pytest.mark.serve, pytest.mark.timeout(300)]

SAMPLE_RATE = 16_000
DELAY_S = 1.5  # per ASR batch (8 chunks of 30 s)
POLICY = {"policy_function": "core.autoscaling:QueuedAudioPolicy",
          "policy_kwargs": {"target_audio_s_per_replica": 120}}
ASR = {"max_ongoing_requests": 8, "autoscaling_config": {
    "min_replicas": 1, "initial_replicas": 1, "max_replicas": 2, "upscale_delay_s": 1, "downscale_delay_s": 4,
    "policy": POLICY}}
DIARIZATION = {"autoscaling_config": {
    "min_replicas": 0, "initial_replicas": 0, "max_replicas": 1, "downscale_to_zero_delay_s": 600,
    "policy": POLICY}}
# The queue is the point here: admission must not shed it (30 min of audio at the fake's assumed speed).
NO_SHEDDING = {"max_queue_wait_s": 3600}
FAST_METRICS = {"RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1"}


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with fake_app_served(free_port(), env={DELAY_ENV: str(DELAY_S), **FAST_METRICS},
                         options={"AsrDeployment": ASR, "DiarizationDeployment": DIARIZATION},
                         args={"ingress": NO_SHEDDING}) as url:
        yield url


def running(deployment: str) -> int:
    from ray import serve
    from ray.serve.schema import ReplicaState

    return serve.status().applications[APP].deployments[deployment].replica_states.get(ReplicaState.RUNNING, 0)


def wait_until(condition: Any, timeout_s: float) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, f"not within {timeout_s} s"
        time.sleep(0.25)
    return time.monotonic() - started


def wav(seconds: float) -> bytes:
    return to_wav_bytes(0.1 * np.sin(np.arange(int(seconds * SAMPLE_RATE)) / 5).astype(np.float32))


def transcribe(url: str, audio: bytes, **fields: Any) -> httpx.Response:
    with httpx.Client(base_url=url, timeout=120) as client:
        return client.post("/v1/audio/transcriptions", files={"file": ("a.wav", audio)},
                           data={"model": "whisper-1", **fields})


def test_queued_audio_adds_an_asr_replica_and_idleness_removes_it(url):
    assert running("AsrDeployment") == 1
    # Three 10-minute files: 60 chunks of 30 s, about 12 s of batches for one replica. The replica holds
    # 8 chunks (240 s of audio) and the rest wait at the ingress's handle: far over 120 s per replica.
    with ThreadPoolExecutor(3) as pool:
        calls = [pool.submit(transcribe, url, wav(600)) for _ in range(3)]
        scaled_up_after_s = wait_until(lambda: running("AsrDeployment") == 2, timeout_s=60)
        responses = [call.result() for call in calls]
    assert [r.status_code for r in responses] == [200] * 3, [r.text[:200] for r in responses]
    print(f"ASR scaled 1 -> 2 replicas {scaled_up_after_s:.1f} s into the load")
    # Idle: nothing queued, so after downscale_delay_s the second replica goes.
    scaled_down_after_s = wait_until(lambda: running("AsrDeployment") == 1, timeout_s=120)
    print(f"ASR scaled 2 -> 1 replicas {scaled_down_after_s:.1f} s after the load ended")


def test_a_diarized_request_waits_for_a_deployment_scaled_to_zero_and_says_so(url):
    import ray

    assert running("DiarizationDeployment") == 0
    response = transcribe(url, wav(5), response_format="diarized_json", diarize="true")
    assert response.status_code == 200, response.text
    assert response.json()["segments"][0]["speaker"] == "SPEAKER_00"
    assert running("DiarizationDeployment") == 1
    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    ingress_log = "".join(p.read_text(errors="replace") for p in logs.glob("replica_*TranscriptionIngress*.log"))
    assert "DiarizationDeployment has no replica running (scaled to zero); waiting for one to start" in ingress_log
