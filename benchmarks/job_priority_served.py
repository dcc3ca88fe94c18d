"""Does a background job make interactive requests wait? The whole service under a real Ray Serve.

    flock /tmp/ray-tests.lock env PYTHONPATH=. python -m benchmarks.job_priority_served

benchmarks/job_priority.py measures the ASR replica's chunk queue alone; this measures the same end to
end: the fake app (tests/serve/fake_app.py: every deployment real, a fake ASR model that takes
DELAY_S per batch of up to BATCH_SIZE chunks and plans one chunk per 30 s) deployed through the Serve
controller on a local Ray, with one ASR replica, called over HTTP. So the numbers include what the
queue benchmark leaves out: uploads, decoding in the ingress, the plan call (it waits for the model's
one thread like a batch), Serve's router and the replica's `max_ongoing_requests`.

An interactive client sends a 60 s request (2 chunks) every EVERY_S seconds for LOAD_S seconds, each
on its own (it does not wait for the one before), and records each latency. Setups:

  (a) the interactive load alone: the baseline;
  (b) plus a 2-hour recording (240 chunks) submitted as a job at the start of the load: its chunks go at
      BACKGROUND priority, at most args.jobs.max_chunks_in_flight of them at a time (JOB_WINDOWS);
  (c) plus the same recording sent at the start to POST /v1/audio/transcriptions instead, as a client
      without jobs would: INTERACTIVE priority, args.ingress.max_chunks_in_flight (32) at a time.

It prints each setup's interactive latency (p50, p95, max) over the whole load and over the requests
sent while the 2-hour recording ran (it ends before the load does, and a request sent after it has the
replica alone), and how long the recording took, from its upload to its transcript (a job: until its
status reads succeeded). Admission control would shed the 2-hour request or the ones queued behind it
at the default max_queue_wait_s; it is set to an hour here, and any 503 is counted in the table's `shed`
column rather than in the latencies. The ASR replica's max_ongoing_requests is serve_config.yaml's 32:
in (c) the request's own 32 chunks take every slot, so interactive calls also wait in Serve's router,
in arrival order, as they would in production.

Measured on two cores (the defaults above), over the requests sent while the 2-hour recording ran:
interactive p50 0.42 s alone; 0.79 s beside the job at window 4 and 0.84 s at window 8 (p95 0.90 both);
1.53 s (p95 1.59) beside the same recording sent as one request. Nothing was shed. Beside a job a
request pays about two batches more than alone, whatever the window: its plan call waits out the batch
decoding on the model's one thread, and the next batch, formed of job chunks before the plan returned;
then its chunks go first. Beside the synchronous request it waits behind that request's queued chunks
(32 in flight, four batches). The price is the job's own time: 34.7 s at window 4 and 19.3 s at 8,
against 11.8 s for the synchronous request, which takes every batch it wants.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from tests.serve.fake_app import DELAY_ENV
from tests.serve.served import ASR_USER_CONFIG, fake_app_served, free_port
from tests.speech import to_wav_bytes

BATCH_SIZE = 8
DELAY_S = 0.25  # per batch, whatever its size
ASR_MAX_ONGOING = 32  # serve_config.yaml's: one batch decoding and the next filling, with room to spare
UPLOAD_RATE_HZ = 4_000  # of the uploads; small files, the same chunks once resampled
REQUEST_S = 60  # 2 chunks
EVERY_S = 0.5
LOAD_S = 40
LONG_S = 2 * 3600  # 240 chunks
JOB_WINDOWS = (4, 8)
SYNC_WINDOW = 32  # args.ingress.max_chunks_in_flight's default
LONG_TIMEOUT_S = 300


@dataclass(frozen=True)
class Setup:
    name: str
    long: str | None  # "job", "sync" or None
    job_window: int = JOB_WINDOWS[0]


def spread(latencies_s: list[float]) -> tuple[float, float, float]:
    """p50, p95 and max, seconds."""
    ordered = sorted(latencies_s)
    return statistics.median(ordered), statistics.quantiles(ordered, n=20, method="inclusive")[18], ordered[-1]


@dataclass
class Outcome:
    sent_s: list[float] = field(default_factory=list)  # each answered request's send time, into the load
    latencies_s: list[float] = field(default_factory=list)
    shed: int = 0
    failed: int = 0
    long_s: float | None = None  # how long the long work took, from its upload on
    long_status: str = "-"

    def during(self) -> list[float]:
        """The latencies of the requests sent while the long work ran (all of them without one): it ends
        before the load does, so the whole load's figures mix in requests that had the replica alone."""
        end_s = self.long_s if self.long_s is not None else float("inf")
        return [latency for sent, latency in zip(self.sent_s, self.latencies_s, strict=True) if sent < end_s]

    def line(self, name: str) -> str:
        p50, p95, top = spread(self.latencies_s)
        during = self.during()
        d50, d95, dtop = spread(during) if len(during) >= 2 else (float("nan"),) * 3
        long = f"{self.long_s:8.1f}" if self.long_s is not None else f"{'-':>8}"
        return (f"{name:42} {p50:6.2f} {p95:6.2f} {top:6.2f}   {d50:6.2f} {d95:6.2f} {dtop:6.2f} {len(during):4}  "
                f"{len(self.latencies_s):4} {self.shed:4} {self.failed:4} {long} {self.long_status}")


def wav(seconds: float) -> bytes:
    samples = np.arange(int(seconds * UPLOAD_RATE_HZ))
    return to_wav_bytes(0.1 * np.sin(samples / 5).astype(np.float32), UPLOAD_RATE_HZ)


async def interactive(http: httpx.AsyncClient, audio: bytes, at_s: float, started: float, outcome: Outcome) -> None:
    """One request at `at_s` seconds into the load; its latency, or a shed or failed count, into `outcome`."""
    await asyncio.sleep(max(0.0, at_s - (time.perf_counter() - started)))
    sent = time.perf_counter()
    try:
        response = await http.post("/v1/audio/transcriptions", files={"file": ("a.wav", audio)},
                                   data={"model": "whisper-1"})
    except httpx.HTTPError:
        outcome.failed += 1
        return
    if response.status_code == 503:
        outcome.shed += 1
    elif response.status_code != 200:
        outcome.failed += 1
    else:
        outcome.sent_s.append(sent - started)
        outcome.latencies_s.append(time.perf_counter() - sent)


async def long_job(http: httpx.AsyncClient, audio: bytes, outcome: Outcome) -> None:
    """The recording as a job: submitted, then polled until it ends."""
    sent = time.perf_counter()
    accepted = await http.post("/v1/audio/transcriptions/jobs", files={"file": ("long.wav", audio)},
                               data={"model": "whisper-1"})
    if accepted.status_code != 202:
        outcome.long_status = f"refused {accepted.status_code}"
        return
    job_id = accepted.json()["id"]
    while time.perf_counter() - sent < LONG_TIMEOUT_S:
        status = (await http.get(f"/v1/jobs/{job_id}")).json()["status"]
        if status in ("succeeded", "failed", "cancelled"):
            outcome.long_s, outcome.long_status = time.perf_counter() - sent, status
            return
        await asyncio.sleep(0.25)
    outcome.long_status = "timed out"


async def long_request(http: httpx.AsyncClient, audio: bytes, outcome: Outcome) -> None:
    """The recording as one synchronous request."""
    sent = time.perf_counter()
    response = await http.post("/v1/audio/transcriptions", files={"file": ("long.wav", audio)},
                               data={"model": "whisper-1"}, timeout=LONG_TIMEOUT_S)
    outcome.long_s = time.perf_counter() - sent
    outcome.long_status = "ok" if response.status_code == 200 else f"HTTP {response.status_code}"


async def run_setup(url: str, setup: Setup, short: bytes, long: bytes) -> Outcome:
    outcome = Outcome()
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=url, timeout=LONG_TIMEOUT_S, limits=limits) as http:
        started = time.perf_counter()
        work = []
        if setup.long == "job":
            work.append(long_job(http, long, outcome))
        elif setup.long == "sync":
            work.append(long_request(http, long, outcome))
        count = int(LOAD_S / EVERY_S)
        work += [interactive(http, short, k * EVERY_S, started, outcome) for k in range(count)]
        await asyncio.gather(*work)
    return outcome


async def warm_up(url: str, short: bytes) -> None:
    """A few requests first, so the first measured one does not pay for a cold start."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        for _ in range(3):
            (await http.post("/v1/audio/transcriptions", files={"file": ("a.wav", short)})).raise_for_status()


def served_args(data_dir: str, job_window: int) -> dict[str, Any]:
    return {"ingress": {"max_queue_wait_s": 3600, "max_chunks_in_flight": SYNC_WINDOW},
            "jobs": {"data_dir": data_dir, "max_chunks_in_flight": job_window}}


def main() -> None:
    short, long = wav(REQUEST_S), wav(LONG_S)
    setups = [Setup("(a) interactive load alone", None),
              *(Setup(f"(b) + 2 h as a job, window {w} (BACKGROUND)", "job", w) for w in JOB_WINDOWS),
              Setup(f"(c) + 2 h as a request, window {SYNC_WINDOW}", "sync")]
    asr_options = {"num_replicas": 1, "max_ongoing_requests": ASR_MAX_ONGOING,
                   "user_config": {**ASR_USER_CONFIG, "batch_size": BATCH_SIZE}}
    options = {"TranscriptionIngress": {"max_ongoing_requests": 256}}  # every request reaches the ingress
    print(f"one ASR replica: batch_size {BATCH_SIZE}, {DELAY_S} s per batch, max_ongoing_requests "
          f"{ASR_MAX_ONGOING}; interactive: a {REQUEST_S} s request ({REQUEST_S // 30} chunks) every {EVERY_S} s "
          f"for {LOAD_S} s; the long work: {LONG_S} s ({LONG_S // 30} chunks, "
          f"{LONG_S // 30 / BATCH_SIZE * DELAY_S:.1f} s of full batches alone); uploads {UPLOAD_RATE_HZ} Hz WAV "
          f"({len(long) / 2**20:.0f} MiB for the long one); max_queue_wait_s 3600\n")
    results: dict[str, Outcome] = {}
    # One deployment per job window (args replace every replica); the other setups run on the first.
    for window in JOB_WINDOWS:
        with tempfile.TemporaryDirectory() as data_dir, \
                fake_app_served(free_port(), env={DELAY_ENV: str(DELAY_S)}, asr_options=asr_options,
                                options=options, args=served_args(data_dir, window)) as url:
            asyncio.run(warm_up(url, short))
            for setup in (s for s in setups if s.job_window == window):
                print(f"running {setup.name} ...", flush=True)
                results[setup.name] = asyncio.run(run_setup(url, setup, short, long))
                time.sleep(2)  # the replicas settle between setups
    print(f"\n{'':42} {'interactive latency, s':^20}   {'sent while the long':^25}  {'':14} {'long':>9}")
    print(f"{'setup':42} {'whole load':^20}   {'work ran':^25}  {'':14} {'work':>9}")
    print(f"{'':42} {'p50':>6} {'p95':>6} {'max':>6}   {'p50':>6} {'p95':>6} {'max':>6} {'n':>4}  "
          f"{'ok':>4} {'shed':>4} {'fail':>4} {'done, s':>8} status")
    for setup in setups:
        print(results[setup.name].line(setup.name))
    during = {name: statistics.median(outcome.during()) for name, outcome in results.items()}
    a, *jobs, c = (during[s.name] for s in setups)
    print(f"\nreading: while the 2 h ran, interactive p50 was {' / '.join(f'{j:.2f}' for j in jobs)} s beside it "
          f"as a job (window {' / '.join(map(str, JOB_WINDOWS))}) and {c:.2f} s beside it as one request "
          f"({c / max(jobs):.1f}x the job's), against {a:.2f} s alone")

if __name__ == "__main__":
    main()
