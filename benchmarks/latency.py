"""End-to-end latency of a 30 s two-speaker call through the running service, beside the same work
done by the model holders in this process without Ray or HTTP (the baseline).

    python -m benchmarks.latency [--url http://127.0.0.1:8000] [--runs 5]

Start the service first (scripts/serve). The baseline loads its own models here, so run it on an
otherwise idle machine; both sides print the median and min of `--runs` runs after one warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import httpx

from tests.audio_samples import pyannote_sample, pyannote_sample_wav_bytes


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    fn()  # warm-up
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - started)
    return seconds


def service(url: str, runs: int) -> dict[str, list[float]]:
    data = pyannote_sample_wav_bytes()
    with httpx.Client(base_url=url, timeout=600) as client:
        def post(**fields: str) -> None:
            response = client.post("/v1/audio/transcriptions", files={"file": ("call.wav", data)},
                                   data={"model": "whisper-1", **fields})
            response.raise_for_status()

        return {
            "transcribe (json)": timed(lambda: post(), runs),
            "transcribe + words (srt)": timed(lambda: post(response_format="srt"), runs),
            "transcribe + diarize (diarized_json)": timed(lambda: post(response_format="diarized_json"), runs),
        }


def baseline(runs: int) -> dict[str, list[float]]:
    from core.transcript import AsrOptions, SpeakerOptions
    from deployments.asr import AsrConfig, AsrHolder
    from deployments.diarization import DiarizationConfig, DiarizationHolder

    audio, _ = pyannote_sample()
    asr = AsrHolder(AsrConfig(model="bundled/tiny.en", cpu_threads=2))
    diarization = DiarizationHolder(DiarizationConfig(cpu_threads=2))
    try:
        return {
            "transcribe (json)": timed(lambda: asr.run(asr.transcribe, audio, AsrOptions()), runs),
            "transcribe + words (srt)": timed(
                lambda: asr.run(asr.transcribe, audio, AsrOptions(word_timestamps=True)), runs),
            "transcribe + diarize (diarized_json)": timed(lambda: (
                asr.run(asr.transcribe, audio, AsrOptions(word_timestamps=True)),
                diarization.run(diarization.diarize, audio, SpeakerOptions())), runs),
        }
    finally:
        asr.close()
        diarization.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--runs", type=int, default=5)
    options = parser.parse_args()
    served = service(options.url, options.runs)
    local = baseline(options.runs)
    print(f"\n30 s call, {options.runs} runs each          service median (min)    holders in-process, sequential")
    for name in served:
        s, b = served[name], local[name]
        print(f"{name:38} {statistics.median(s):6.2f} s ({min(s):5.2f})      "
              f"{statistics.median(b):6.2f} s ({min(b):5.2f})")


if __name__ == "__main__":
    main()
