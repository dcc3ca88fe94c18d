"""Does a background job make interactive requests wait? One ASR replica's chunk queue, without Ray.

    python -m benchmarks.job_priority [--batch-size 8] [--batch-s 0.2] [--job-chunks 400] [--job-window 8]

Drives the queue an ASR replica decodes from (deployments/batching.py's `WhileBusy`, ranked by
`ChunkTask.priority` as `AsrDeployment` ranks it) with a fake model that takes `batch_s` per batch of up
to `batch_size` chunks, whatever its size. One call per chunk, as serve_app/pipeline.py sends them.
A background job of `job_chunks` chunks keeps at most `job_window` of them in flight (a job runner
sends its next chunk when one returns); an interactive request of `request_chunks` chunks, all sent at
once, arrives every `every_s` seconds, `requests` times, starting half a period after the job. It prints
each setup's interactive latency (p50, p95, max; the whole request, first chunk sent to last decoded)
and the job's completion time, side by side with the baseline without a job:

  (a) no job: the baseline;
  (b) the job with the window, at INTERACTIVE priority (no priority: every chunk ranks the same);
  (c) the job with the window, at BACKGROUND priority;
  (d) the job with a wide window (`wide_window`, 64), no priority: every chunk a request sends queues
      behind the job's;
  (e) the wide window at BACKGROUND priority: the replica's queue alone would put requests first again.

Why the window must stay small even with (e)'s result: Serve's `max_ongoing_requests` on the ASR
deployment (serve_config.yaml 32, serve_config.cpu.yaml 16) caps the calls a replica accepts, and the
calls beyond it queue in Serve's router, in arrival order, where no priority applies. Priority inside the
replica decides only among calls the replica has accepted, so the chunks a job keeps in flight on one
replica, summed over the ingress replicas that run jobs, must stay well below `max_ongoing_requests`
minus `batch_size`: then an interactive request's chunks are always accepted and reach the replica's
queue, where they go into the next batch ahead of the job's. That is why the job runner keeps a small
window per ingress replica, and why (c), not (e), is the setup the service runs.

Measured with the defaults (8 chunks, 0.2 s per batch): at BACKGROUND priority the interactive p50 stays
at 0.5-0.57 s at every window from 4 to 64 (a request waits out the batch decoding when it arrives, then
decodes in two batches of its own; 0.40 s with no job), while without priority a window of 64 makes it
2.25 s. The job's completion time at BACKGROUND falls with its window: 23.4 s at 4, 21.6 at 8, 20.0
at 9, 15.7 at 12, 12.8 at 16 and 24, 12.7 at 64 (its 10 s of batches plus 2.5 s of the requests'). With
a window of one batch or less no job chunk is waiting when a batch starts (the job sends its next chunks
only when a batch returns them), so batches part-filled by requests stay part-filled; about two batches
(`--job-window 16`) keeps one filling while the other decodes.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import dataclass

import numpy as np

from core.chunks import BACKGROUND, INTERACTIVE, ChunkTask, SpeechChunk
from deployments.batching import WhileBusy

BATCH_WAIT_S = 0.01  # AsrDeploymentConfig.batch_wait_s's default


@dataclass(frozen=True)
class Setup:
    name: str
    job_window: int  # 0: no job
    job_priority: int = INTERACTIVE


@dataclass
class Outcome:
    latencies_s: list[float]
    job_s: float | None  # None: no job

    def line(self, name: str, baseline: Outcome | None) -> str:
        ordered = sorted(self.latencies_s)
        p50, p95 = statistics.median(ordered), statistics.quantiles(ordered, n=20, method="inclusive")[18]
        text = f"{name:44} {p50:6.2f} {p95:6.2f} {ordered[-1]:6.2f}"
        if baseline is not None:
            text += f" {p50 / statistics.median(baseline.latencies_s):7.1f}x"
        else:
            text += f" {'':8}"
        return text + (f" {self.job_s:8.1f}" if self.job_s is not None else f" {'-':>8}")


def chunk(priority: int) -> ChunkTask:
    """A chunk as the pipeline sends it; its audio does not matter to the queue."""
    return ChunkTask(model="tiny.en", chunk=SpeechChunk(0.0, 30.0), audio=np.zeros(1, dtype=np.float32),
                     language="en", priority=priority)


async def run_setup(setup: Setup, options: argparse.Namespace) -> Outcome:
    async def decode(batch: list[ChunkTask]) -> list[None]:
        await asyncio.sleep(options.batch_s)  # a batch takes as long whatever its size, as on a GPU
        return [None] * len(batch)

    queue: WhileBusy[ChunkTask, None] = WhileBusy(decode, options.batch_size, wait_s=BATCH_WAIT_S,
                                                  priority=lambda item: item.priority)
    started = time.perf_counter()

    async def job() -> float:
        window = asyncio.Semaphore(setup.job_window)

        async def one() -> None:
            async with window:
                await queue.submit([chunk(setup.job_priority)])

        await asyncio.gather(*(one() for _ in range(options.job_chunks)))
        return time.perf_counter() - started

    async def request(at_s: float) -> float:
        await asyncio.sleep(at_s - (time.perf_counter() - started))
        sent = time.perf_counter()
        await asyncio.gather(*(queue.submit([chunk(INTERACTIVE)]) for _ in range(options.request_chunks)))
        return time.perf_counter() - sent

    job_run = asyncio.ensure_future(job()) if setup.job_window else None
    latencies = await asyncio.gather(*(request(options.every_s * (k + 0.5)) for k in range(options.requests)))
    return Outcome(list(latencies), await job_run if job_run else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=8, help="chunks per batch (asr.batch_size)")
    parser.add_argument("--batch-s", type=float, default=0.2, help="seconds per batch, whatever its size")
    parser.add_argument("--job-chunks", type=int, default=400)
    parser.add_argument("--job-window", type=int, default=8, help="job chunks in flight at most")
    parser.add_argument("--wide-window", type=int, default=64, help="the window of setups (d) and (e)")
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--request-chunks", type=int, default=10)
    parser.add_argument("--every-s", type=float, default=1.0, help="seconds between interactive requests")
    options = parser.parse_args()
    setups = [Setup("(a) no job", 0),
              Setup(f"(b) job, window {options.job_window}, no priority", options.job_window),
              Setup(f"(c) job, window {options.job_window}, BACKGROUND", options.job_window, BACKGROUND),
              Setup(f"(d) job, window {options.wide_window}, no priority", options.wide_window),
              Setup(f"(e) job, window {options.wide_window}, BACKGROUND", options.wide_window, BACKGROUND)]
    alone_s = -(-options.job_chunks // options.batch_size) * options.batch_s
    print(f"one replica: {options.batch_size} chunks per batch, {options.batch_s} s per batch; "
          f"{options.requests} interactive requests of {options.request_chunks} chunks, one every "
          f"{options.every_s} s; a job of {options.job_chunks} chunks ({alone_s:.1f} s of batches alone)\n")
    print(f"{'setup':44} {'interactive latency, s':>20} {'p50 vs':>8} {'job':>8}")
    print(f"{'':44} {'p50':>6} {'p95':>6} {'max':>6} {'(a)':>8} {'done, s':>8}")
    baseline = None
    for setup in setups:
        outcome = asyncio.run(run_setup(setup, options))
        print(outcome.line(setup.name, baseline), flush=True)
        baseline = baseline or outcome


if __name__ == "__main__":
    main()
