"""Accuracy of the raw libraries, and of the service's holders, on real recorded speech with pauses.

    python -m benchmarks.real_recordings [--files pause_in_first_window meeting_95s] [--no-holders]

For each test file of tests/real_speech.py (real recordings joined with 2-8 s pauses; scripts/setup
fetches them) prints WER against the reference (tests/speech.py's normaliser) of:
- raw whisperX: `whisperx.load_model(tiny.en, vad_method="pyannote", chunk_size 30)`, batch 8;
- raw faster-whisper, sequential: `WhisperModel.transcribe(beam_size=5, word_timestamps=True)`;
- the service's AsrHolder, without and with word timestamps;
- raw whisperX and the AsrHolder again on the file as a user's MP4 upload (AAC, tests/real_speech.py's
  `mp4_bytes`), decoded the way the service decodes uploads (serve_app.media);
and the speaker count and DER (pyannote.metrics, whole file, collar 0.25 s and 0) of the diarization
pipeline the service builds (`DiarizationHolder(DiarizationConfig())`: segmentation-3.0 + CAM++; the
official pyannote pipeline needs the model hub). Diarization runs first: CTranslate2 loaded in the same
process slows torch down. About 2 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.real_speech import LAYOUTS, RealSpeech, build
from tests.speech import word_error_rate

TINY = "bundled/tiny.en"


def der(speech: RealSpeech, turns: list[tuple[str, float, float]], collar: float) -> dict[str, float]:
    """DER and its parts (as fractions of reference speech) over the whole file."""
    from pyannote.core import Annotation, Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    def annotation(items: Any) -> Annotation:
        out = Annotation()
        for speaker, start, end in items:
            out[Segment(start, end)] = speaker
        return out

    metric = DiarizationErrorRate(collar=collar)
    detail = metric(annotation(speech.turns), annotation(turns), detailed=True,
                    uem=Timeline([Segment(0.0, speech.duration_s)]))
    total = detail["total"] or 1.0
    return {"der": detail["diarization error rate"], "confusion": detail["confusion"] / total,
            "missed": detail["missed detection"] / total, "false_alarm": detail["false alarm"] / total}


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def diarization(files: list[RealSpeech]) -> dict[str, dict[str, Any]]:
    from core.transcript import SpeakerOptions
    from deployments.diarization import DiarizationConfig, DiarizationHolder

    holder = DiarizationHolder(DiarizationConfig())
    out = {}
    try:
        for speech in files:
            turns, seconds = timed(lambda s=speech: holder.run(holder.diarize, s.audio, SpeakerOptions()))  # type: ignore[misc]
            found = [(t.speaker, t.start_s, t.end_s) for t in turns]
            out[speech.name] = {"speakers": len({t[0] for t in found}), "seconds": seconds,
                                "collar_0.25": der(speech, found, 0.25), "collar_0": der(speech, found, 0.0)}
    finally:
        holder.close()
    return out


def mp4_audio(speech: RealSpeech) -> np.ndarray:
    """The file through its MP4/AAC upload and back, decoded as the service decodes uploads."""
    from serve_app.media import decode_audio_sync
    from tests.real_speech import mp4_bytes

    return decode_audio_sync(mp4_bytes(speech.name), max_duration_s=3600).samples


def raw_whisperx(files: list[RealSpeech], mp4: bool = False) -> dict[str, tuple[float, float, str]]:
    import whisperx

    from deployments.bundled import whisper_model_dir

    model = whisperx.load_model(whisper_model_dir(TINY), "cpu", compute_type="int8", vad_method="pyannote",
                                vad_options={"vad_onset": 0.5, "vad_offset": 0.363, "chunk_size": 30},
                                threads=2)
    out = {}
    for speech in files:
        audio = mp4_audio(speech) if mp4 else np.array(speech.audio)
        result, seconds = timed(lambda a=audio: model.transcribe(a, batch_size=8, language="en",  # type: ignore[misc]
                                                                  chunk_size=30))
        text = " ".join(seg["text"].strip() for seg in result["segments"])
        out[speech.name] = (word_error_rate(speech.reference, text), seconds, text)
    return out


def raw_faster_whisper(files: list[RealSpeech]) -> dict[str, tuple[float, float, str]]:
    from faster_whisper import WhisperModel

    from deployments.bundled import whisper_model_dir

    model = WhisperModel(whisper_model_dir(TINY), device="cpu", compute_type="int8", cpu_threads=2)
    out = {}
    for speech in files:
        def run(s: RealSpeech = speech) -> str:
            segments, _ = model.transcribe(np.array(s.audio), language="en", beam_size=5, word_timestamps=True)
            return " ".join(seg.text.strip() for seg in segments)

        text, seconds = timed(run)
        out[speech.name] = (word_error_rate(speech.reference, text), seconds, text)
    return out


def holder_asr(files: list[RealSpeech]) -> dict[str, dict[str, tuple[float, float, str]]]:
    from core.transcript import AsrOptions
    from deployments.asr import AsrConfig, AsrHolder

    holder = AsrHolder(AsrConfig(model=TINY, cpu_threads=2))
    out: dict[str, dict[str, tuple[float, float, str]]] = {}
    try:
        for speech in files:
            out[speech.name] = {}
            runs = [("AsrHolder, word_timestamps=False", speech.audio, False),
                    ("AsrHolder, word_timestamps=True", speech.audio, True),
                    ("AsrHolder, MP4 upload, word_timestamps=False", mp4_audio(speech), False)]
            for label, audio, words in runs:
                result, seconds = timed(lambda a=audio, w=words: holder.run(  # type: ignore[misc]
                    holder.transcribe, a, AsrOptions(word_timestamps=w)))
                text = " ".join(seg.text for seg in result.segments)
                out[speech.name][label] = (word_error_rate(speech.reference, text), seconds, text)
    finally:
        holder.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", nargs="+", default=["pause_in_first_window", "meeting_95s"], choices=list(LAYOUTS))
    parser.add_argument("--no-holders", action="store_true", help="skip the service's AsrHolder rows")
    parser.add_argument("--texts", action="store_true", help="print every hypothesis")
    args = parser.parse_args()
    files = [build(name) for name in args.files]

    diar = diarization(files)
    rows: dict[str, dict[str, tuple[float, float, str]]] = {s.name: {} for s in files}
    for name, (w, t, text) in raw_whisperx(files).items():
        rows[name]["raw whisperX (batched, VAD chunks)"] = (w, t, text)
    for name, (w, t, text) in raw_whisperx(files, mp4=True).items():
        rows[name]["raw whisperX, MP4 upload"] = (w, t, text)
    for name, (w, t, text) in raw_faster_whisper(files).items():
        rows[name]["raw faster-whisper (sequential, words)"] = (w, t, text)
    holder_note = ""
    if not args.no_holders:
        try:
            for name, by_label in holder_asr(files).items():
                rows[name].update(by_label)
        except Exception as e:  # noqa: BLE001 - the holder's API is in flux; report and go on
            holder_note = f"AsrHolder rows left out: {type(e).__name__}: {e}"

    for speech in files:
        d = diar[speech.name]
        print(f"\n{speech.name}: {speech.duration_s:.1f} s, {len(speech.speakers)} speakers "
              f"({', '.join(speech.speakers)}), {len(speech.reference.split())} reference words, "
              f"pauses {', '.join(f'{b - a:.1f} s at {a:.1f}' for a, b in speech.pauses)}")
        print(f"  {'tiny.en int8, cpu':46} {'WER':>6} {'seconds':>8}")
        for label, (w, t, text) in rows[speech.name].items():
            print(f"  {label:46} {w:6.3f} {t:8.1f}")
            if args.texts:
                print(f"      {text}")
        c25, c0 = d["collar_0.25"], d["collar_0"]
        print(f"  {'diarization (segmentation-3.0 + CAM++)':46} speakers {d['speakers']} (reference "
              f"{len(speech.speakers)}), DER {c25['der']:.3f} at collar 0.25 s (confusion {c25['confusion']:.3f}, "
              f"missed {c25['missed']:.3f}, false alarm {c25['false_alarm']:.3f}), {c0['der']:.3f} at collar 0; "
              f"{d['seconds']:.1f} s")
    if holder_note:
        print("\n" + holder_note)


if __name__ == "__main__":
    main()
