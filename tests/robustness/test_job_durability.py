"""Accepted jobs survive the death of the ingress replica running them, and of the whole service.

With fake holders under a real Ray Serve and the embedded default's SQLite job store in a folder of the
test's own. A job of 40 speech chunks (DELAY_S per batch of 4) is killed while its chunks are decoded:
1. its ingress replica is SIGKILLed: Serve starts another, whose runner takes the job over once the dead
   runner's lease has run out (attempt 2) and finishes it;
2. the ingress replica is SIGKILLed and Ray shut down under it (every process of the service gone); a new
   Ray and a new deploy on the same data folder take the job over and finish it;
3. with two ingress replicas sharing a Redis job store (as on a cluster), the one running the job is
   SIGKILLed, and the job is taken over and finished.
Either way the job ends once: succeeded, every chunk's text in order, one callback. What it had finished
before the kill is kept and not done again: its diarization (one call, done early), its plan and each
chunk decoded; only the chunks in flight at the kill (at most the window of 4) are decoded twice.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.redis_server import redis_server
from tests.serve.callback_receiver import Receiver, callback_receiver
from tests.serve.fake_app import BATCH_LOG_ENV, CALL_LOG_ENV, DELAY_ENV
from tests.serve.served import APP, RAY_ENV, ROOT, WAIT_S, free_port, serve_config
from tests.speech import to_wav_bytes

pytestmark = [pytest.mark.serve, pytest.mark.timeout(600)]

DELAY_S = 0.4
CHUNKS = 40
LEASE_S = 3.0
WINDOW = 4  # a job's chunks in flight
INGRESS = "TranscriptionIngress"


@dataclass
class Service:
    url: str
    folder: Path
    callbacks: Receiver

    def chunks_decoded(self) -> int:
        log = self.folder / "batches.log"
        return sum(len(line.split()[1].split(",")) for line in log.read_text().splitlines()) if log.exists() else 0

    def diarize_calls(self, samples: int) -> int:
        log = self.folder / "calls.log"
        if not log.exists():
            return 0
        calls = [line.split() for line in log.read_text().splitlines()]
        return sum(call[0] == "FakeDiarizationHolder" and call[2] == str(samples) for call in calls)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def callbacks() -> Iterator[tuple[str, Receiver]]:
    with callback_receiver() as receiver:
        yield receiver.url, receiver


def start(folder: Path, callbacks: Receiver, port: int, store_url: str | None = None,
          ingress_replicas: int = 1, **jobs: Any) -> Service:
    """A Ray of the test's own with the fake app deployed, keeping jobs in `folder`/data (and in the store at
    `store_url`, if given)."""
    import ray
    from ray.serve._private.constants import SERVE_NAMESPACE

    from serve_app.launch import deploy

    env = {"PYTHONPATH": str(ROOT), **RAY_ENV, DELAY_ENV: str(DELAY_S), BATCH_LOG_ENV: str(folder / "batches.log"),
           CALL_LOG_ENV: str(folder / "calls.log")}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, namespace=SERVE_NAMESPACE,
             runtime_env={"env_vars": env})
    args = {"jobs": {"data_dir": str(folder / "data"), "lease_s": LEASE_S, "max_chunks_in_flight": WINDOW,
                     "callback_allow": ["127.0.0.1/32"], "callback_allow_http": True, "store_url": store_url, **jobs}}
    options = {INGRESS: {"num_replicas": ingress_replicas}}
    url = deploy(serve_config(port, options=options, args=args), timeout_s=WAIT_S)
    return Service(url, folder, callbacks)


def stop() -> None:
    import ray
    from ray import serve

    try:
        serve.shutdown()
    finally:
        ray.shutdown()


def ingress_pid() -> int:
    """The ingress replica's process, by the title Ray gives an actor's process (ray::ServeReplica:app:name)."""
    import psutil

    title = f"ServeReplica:{APP}:{INGRESS}"
    found = [process.pid for process in psutil.process_iter(["cmdline"])
             if any(title in part for part in process.info["cmdline"] or ())]
    assert len(found) == 1, found
    return found[0]


def job_status(service: Service, job_id: str) -> dict[str, Any]:
    with httpx.Client(base_url=service.url, timeout=WAIT_S) as http:
        return http.get(f"/v1/jobs/{job_id}").json()


def wait_for(predicate: Any, what: str, timeout_s: float = 120) -> float:
    started = time.monotonic()
    while True:
        try:
            if predicate():
                return time.monotonic() - started
        except httpx.HTTPError:
            pass  # the service is between replicas
        assert time.monotonic() - started < timeout_s, f"{what}: not after {timeout_s} s"
        time.sleep(0.2)


def submit_long_job(service: Service, callback_url: str) -> tuple[str, int]:
    """A job of CHUNKS chunks with speakers; its id, and its length in 16 kHz samples."""
    seconds = CHUNKS * 30
    audio = to_wav_bytes(0.1 * np.sin(np.arange(seconds * 4000) / 5).astype(np.float32), 4000)
    with httpx.Client(base_url=service.url, timeout=WAIT_S) as http:
        accepted = http.post("/v1/audio/transcriptions/jobs", files={"file": ("long.wav", audio)},
                             data={"response_format": "diarized_json", "callback_url": callback_url})
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["id"]
    # Killed only once the diarization is kept and a part of the chunks (not all) is decoded.
    wait_for(lambda: (job_status(service, job_id)["progress"].get("chunks_done") or 0) >= 8
             and job_status(service, job_id)["stage"] == "turns", "the job half-way through its chunks")
    assert service.chunks_decoded() < CHUNKS
    return job_id, seconds * 16_000


def check_finished_once(service: Service, job_id: str, samples: int, callbacks: Receiver) -> dict[str, Any]:
    wait_for(lambda: job_status(service, job_id)["status"] in ("succeeded", "failed", "cancelled"), "the job's end")
    job = job_status(service, job_id)
    assert job["status"] == "succeeded", job
    with httpx.Client(base_url=service.url, timeout=WAIT_S) as http:
        result = http.get(f"/v1/jobs/{job_id}/result").json()
    assert result["text"] == " ".join(["transcribe by fake/tiny.en"] * CHUNKS)  # every chunk, once, in order
    wait_for(lambda: job_id in callbacks.job_ids(), "the callback")
    time.sleep(3)  # a second callback would come within the sender's next passes
    assert callbacks.job_ids().count(job_id) == 1
    assert service.diarize_calls(samples) == 1, "the kept diarization ran again"
    assert CHUNKS <= service.chunks_decoded() <= CHUNKS + WINDOW, "kept chunks were decoded again"
    return job


def test_a_job_survives_the_death_of_its_ingress_replica(folder, callbacks):
    callback_url, got = callbacks
    service = start(folder, got, free_port())
    try:
        job_id, samples = submit_long_job(service, callback_url)
        decoded_before = service.chunks_decoded()
        os.kill(ingress_pid(), signal.SIGKILL)
        killed = time.monotonic()
        resumed = wait_for(lambda: job_status(service, job_id)["attempts"] == 2, "another runner taking over")
        job = check_finished_once(service, job_id, samples, got)
        print(f"\ningress replica killed after {decoded_before} of {CHUNKS} chunks; job taken over after "
              f"{resumed:.1f} s (lease {LEASE_S:g} s), finished {time.monotonic() - killed:.1f} s after the kill; "
              f"{service.chunks_decoded()} chunk decodes in all, attempts {job['attempts']}")
        assert job["attempts"] == 2
    finally:
        stop()


def test_a_job_survives_the_death_of_the_whole_service(folder, callbacks):
    callback_url, got = callbacks
    port = free_port()
    service = start(folder, got, port)
    crashed = False
    try:
        job_id, samples = submit_long_job(service, callback_url)
        decoded_before = service.chunks_decoded()
        import ray

        os.kill(ingress_pid(), signal.SIGKILL)  # no graceful shutdown: nothing is released
        ray.shutdown()  # and every other process of the service with it
        crashed = True
        down = time.monotonic()
        service = start(folder, got, port)  # a new Ray, a new deploy, the same data folder
        crashed = False
        print(f"\nservice killed after {decoded_before} of {CHUNKS} chunks, back after {time.monotonic() - down:.1f} s")
        job = check_finished_once(service, job_id, samples, got)
        print(f"job finished {time.monotonic() - down:.1f} s after the crash; {service.chunks_decoded()} chunk "
              f"decodes in all, attempts {job['attempts']}")
        assert job["attempts"] == 2
    finally:
        if not crashed:
            stop()


def test_a_job_in_the_shared_store_is_taken_over_when_the_replica_running_it_dies(folder, callbacks):
    from serve_app.jobs.redis_store import RedisJobStore

    callback_url, got = callbacks
    (folder / "redis").mkdir()
    with redis_server(folder / "redis", appendonly=True) as url:
        service = start(folder, got, free_port(), store_url=url, ingress_replicas=2)
        store = RedisJobStore(url)
        try:
            job_id, samples = submit_long_job(service, callback_url)
            job = store.get(job_id)
            assert job is not None and job.worker is not None
            victim = int(job.worker.split(":")[-2])  # worker names are replica:pid:suffix
            os.kill(victim, signal.SIGKILL)
            resumed = wait_for(lambda: job_status(service, job_id)["attempts"] == 2, "another runner taking over")
            finished = check_finished_once(service, job_id, samples, got)
            taken = store.get(job_id)
            assert taken is not None and taken.worker is not None and f":{victim}:" not in taken.worker
            print(f"\nreplica {victim} of 2 killed; job taken over after {resumed:.1f} s by {taken.worker}; "
                  f"attempts {finished['attempts']}")
        finally:
            store.close()
            stop()


def test_ended_jobs_expire_with_their_files(folder, callbacks):
    _, got = callbacks
    service = start(folder, got, free_port(), retention_s=3)
    try:
        audio = to_wav_bytes(0.1 * np.sin(np.arange(30 * 4000) / 5).astype(np.float32), 4000)
        with httpx.Client(base_url=service.url, timeout=WAIT_S) as http:
            job_id = http.post("/v1/audio/transcriptions/jobs", files={"file": ("a.wav", audio)}).json()["id"]
            wait_for(lambda: job_status(service, job_id)["status"] == "succeeded", "the job's end")
            assert list((folder / "data" / "spool").iterdir())  # its upload and stage outputs
            expired = wait_for(lambda: http.get(f"/v1/jobs/{job_id}").status_code == 404, "the job's expiry", 30)
            assert http.get(f"/v1/jobs/{job_id}/result").status_code == 404
        assert not list((folder / "data" / "spool").iterdir()), "the expired job's files were left behind"
        print(f"\nexpired {expired:.1f} s after it ended (retention 3 s)")
    finally:
        stop()
