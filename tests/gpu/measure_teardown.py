"""Load each model holder on CUDA without Ray, use it once, tear it down, and print what came back.

    python -m tests.gpu.measure_teardown [--cycles 3] [--device cuda]

Prints NVML per-process and device memory and torch's allocated/reserved before load, after load
and after teardown, with the residue, for every holder and cycle. Exits non-zero when a residue is
over the 64 MiB budget. Needs only the project's Python packages and a GPU (no Ray).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The production allocator settings (serve_config.yaml); must be set before CTranslate2 loads.
os.environ.setdefault("CT2_CUDA_ALLOCATOR", "cub_caching")
os.environ.setdefault("CT2_CUDA_CACHING_ALLOCATOR_CONFIG", "4,3,12,33554432")

import numpy as np

from deployments.gpu_memory import MIB, MemorySample, TeardownReport
from deployments.holder import ModelHolder

BUDGET_MIB = 64


def _speech() -> np.ndarray:
    from tests.audio_samples import pyannote_sample

    return pyannote_sample()[0]


def holders(device: str, workdir: Path) -> dict[str, tuple[Callable[[], ModelHolder], Callable[[ModelHolder], object]]]:
    """name -> (build the holder, use it once)."""
    from core.transcript import AsrOptions, Segment, SpeakerOptions
    from deployments.alignment import AlignmentModelHolder, AlignmentModelSpec
    from deployments.asr import AsrConfig, AsrHolder
    from deployments.diarization import DiarizationConfig, DiarizationHolder
    from tests.models.tiny_wav2vec2 import build_tiny_wav2vec2

    audio = _speech()
    compute = "float16" if device.startswith("cuda") else "int8"
    align_dir = build_tiny_wav2vec2(workdir / "tiny-wav2vec2")

    def asr(model: str):
        return (lambda: AsrHolder(AsrConfig(model=model, device=device, compute_type=compute)),
                lambda h: h.run(h.transcribe, audio, AsrOptions(word_timestamps=True)))

    return {
        "asr tiny.en": asr("bundled/tiny.en"),
        "asr base": asr("bundled/base"),
        "diarization embedded": (
            lambda: DiarizationHolder(DiarizationConfig(device=device)),
            lambda h: h.run(h.diarize, audio, SpeakerOptions())),
        "alignment tiny": (
            lambda: AlignmentModelHolder(AlignmentModelSpec(language="en", model=str(align_dir), device=device)),
            lambda h: h.run(h.align, audio, [Segment("hello there how are you", 0.0, 5.0)])),
    }


def _row(name: str, cycle: int, what: str, sample: MemorySample) -> str:
    def mib(value: int | None) -> str:
        return f"{value / MIB:9.1f}" if value is not None else "        -"

    return (f"{name:22} {cycle:>3} {what:9} {mib(sample.nvml_process_bytes)} {mib(sample.nvml_device_used_bytes)} "
            f"{mib(sample.torch_allocated_bytes)} {mib(sample.torch_reserved_bytes)} {mib(sample.rss_bytes)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    options = parser.parse_args(argv)
    print(f"{'holder':22} {'cyc':>3} {'when':9} {'nvml_proc':>9} {'nvml_dev':>9} {'torch_alc':>9} "
          f"{'torch_res':>9} {'rss':>9}   (MiB)")
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for name, (build, use) in holders(options.device, Path(tmp)).items():
            for cycle in range(options.cycles):
                holder = build()
                use(holder)
                report: TeardownReport | None = holder.close()
                assert report is not None
                for what, sample in (("baseline", report.baseline), ("loaded", report.loaded),
                                     ("before", report.before), ("after", report.after)):
                    print(_row(name, cycle, what, sample))
                residue = report.residue_bytes / MIB
                worst = max(worst, residue)
                print(f"{name:22} {cycle:>3} residue   {residue:+9.1f} MiB, teardown {report.seconds:.2f} s")
    print(f"worst residue {worst:+.1f} MiB (budget {BUDGET_MIB} MiB)")
    return 0 if worst <= BUDGET_MIB else 1


if __name__ == "__main__":
    sys.exit(main())
