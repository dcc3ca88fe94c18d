"""Real recorded speech that ships in installed packages, with its reference text and turns."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np

from deployments.bundled import package_dir


def _sample_dir() -> Path:
    return package_dir("pyannote.audio") / "sample"


@cache
def _decoded() -> np.ndarray:
    from faster_whisper.audio import decode_audio

    return decode_audio(str(_sample_dir() / "sample.wav"), sampling_rate=16_000)


def pyannote_sample() -> tuple[np.ndarray, str]:
    """pyannote.audio's 30 s two-speaker phone call (16 kHz float32, a fresh copy) and its transcript."""
    lines = (_sample_dir() / "sample.stm").read_text().splitlines()
    reference = " ".join(line.split(maxsplit=5)[5] for line in lines if len(line.split()) > 5)
    return _decoded().copy(), reference


def pyannote_sample_wav_bytes() -> bytes:
    return (_sample_dir() / "sample.wav").read_bytes()


def pyannote_sample_turns() -> list[tuple[str, float, float]]:
    """Reference speaker turns (speaker, start_s, end_s) from the sample's RTTM."""
    turns = []
    for line in (_sample_dir() / "sample.rttm").read_text().splitlines():
        fields = line.split()
        start, duration = float(fields[3]), float(fields[4])
        turns.append((fields[7], start, start + duration))
    return turns
