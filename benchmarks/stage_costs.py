"""What each model stage costs on this device: where VAD should run, and diarization's embedding batch size.

    python -m benchmarks.stage_costs [--device cpu|cuda] [--file meeting_95s] [--batch-sizes 1,8,32,64]

Runs the holders without Ray on one real recording (tests/real_speech.py):
- ASR: the plan (pyannote VAD over the whole file + language detection) beside the decode of all its
  speech chunks, in seconds and as a share, which says whether VAD is worth a deployment of its own;
- diarization: the whole pipeline at each `embedding_batch_size` (median of `--runs`), since most of its
  time goes to the speaker embeddings.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from core.chunks import chunk_tasks
from core.transcript import AsrOptions, SpeakerOptions
from deployments.asr import AsrConfig, AsrHolder
from deployments.diarization import DiarizationConfig, DiarizationHolder
from tests.real_speech import LAYOUTS, build


def median_s(fn: Callable[[], object], runs: int) -> float:
    fn()  # warm-up
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def asr_stages(audio: np.ndarray, device: str, compute_type: str, runs: int) -> None:
    holder = AsrHolder(AsrConfig(model="bundled/tiny.en", device=device, compute_type=compute_type, cpu_threads=2))
    try:
        plan = holder.run(holder.plan, audio, AsrOptions(), "tiny.en")
        tasks = chunk_tasks(plan, audio)
        plan_s = median_s(lambda: holder.run(holder.plan, audio, AsrOptions(), "tiny.en"), runs)
        decode_s = median_s(lambda: holder.run(holder.decode, tasks), runs)
    finally:
        holder.close()
    minutes = len(audio) / 16_000 / 60
    print(f"\nASR, tiny.en {compute_type} on {device}, {len(plan.chunks)} chunks in {minutes:.1f} min of audio")
    print(f"  plan (VAD + language): {plan_s:6.2f} s  ({plan_s / minutes:.2f} s per audio minute, "
          f"{100 * plan_s / (plan_s + decode_s):.0f}% of ASR)")
    print(f"  decode of all chunks:  {decode_s:6.2f} s  ({decode_s / minutes:.2f} s per audio minute)")


def diarization_batches(audio: np.ndarray, device: str, batch_sizes: list[int], runs: int) -> None:
    print(f"\ndiarization (embedded: segmentation-3.0 + CAM++) on {device}, {len(audio) / 16_000:.0f} s of audio")
    print(f"  {'embedding_batch_size':>20} {'median s':>9} {'RTFx':>6}")
    for size in batch_sizes:
        holder = DiarizationHolder(DiarizationConfig(device=device, cpu_threads=1, embedding_batch_size=size))
        try:
            seconds = median_s(lambda h=holder: h.run(h.diarize, audio, SpeakerOptions()), runs)  # type: ignore[misc]
        finally:
            holder.close()
        print(f"  {size:>20} {seconds:9.2f} {len(audio) / 16_000 / seconds:6.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compute-type", default=None, help="default: int8 on CPU, float16 on CUDA")
    parser.add_argument("--file", default="meeting_95s", choices=list(LAYOUTS))
    parser.add_argument("--batch-sizes", default="1,8,32,64")
    parser.add_argument("--runs", type=int, default=3)
    options = parser.parse_args()
    audio = np.array(build(options.file).audio)
    compute_type = options.compute_type or ("int8" if options.device == "cpu" else "float16")
    asr_stages(audio, options.device, compute_type, options.runs)
    diarization_batches(audio, options.device, [int(n) for n in options.batch_sizes.split(",")], options.runs)


if __name__ == "__main__":
    main()
