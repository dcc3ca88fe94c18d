"""How well known speakers' reference clips name the diarized speakers of real recordings, and which
similarity threshold to name them at.

    python -m benchmarks.speaker_matching [--files pause_in_first_window meeting_95s] [--lengths 2 5 10]

For each test file of tests/real_speech.py (scripts/test-audio fetches the recordings) and each reference
length, every speaker with at least that much speech alone (no other voice over it) plus 2 s more gets a
reference: its first that-many seconds of speech alone, joined. Those stretches are then muted (replaced by
the file's -60 dBFS noise) and the REST of the file is diarized by the service's pipeline
(`DiarizationHolder(DiarizationConfig())`, segmentation-3.0 + CAM++), so no reference is ever compared with
the audio it was cut from. Speakers with too little speech get no reference and must stay unnamed; so must
the voice of tests/real_speech.py's "forever" recording, a reference of a voice that is not in the first
file.

Printed: each reference's cosine similarity to each diarized speaker's centroid (the speaker shown as the
voice with most of its time, and that voice's share), the same-speaker and different-speaker ranges per
length side by side, and per threshold the share of the rest's speech time (frames of one voice only) that
ends up correctly labelled (a known voice with its name, an unknown one with an anonymous label), wrongly
named, or left unnamed although its voice was known; the last row ("best") names each speaker after its
majority voice, the most this diarization allows any matching. About 2 minutes on 2 cores.

Measured (2-core machine, CPU, CAM++; references of 2 / 5 / 10 s; n = pairs over both files):
    same speaker         0.674-0.910 (n 7)  / 0.797-0.947 (n 6)  / 0.960-0.961 (n 2)
    different speakers  -0.091-0.310 (n 23) / -0.107-0.464 (n 23) / -0.052-0.154 (n 10)
    correctly labelled   88.8% / 90.0% / 99.5% of the rest's speech at every threshold from 0.20 to 0.65
                         ("best": 88.8% / 90.6% / 99.5%); at 0.70 the 2 s references fall to 68.3%
The highest different-speaker similarity is Sheila's 5 s reference against Diane (0.464: two women on one
phone line); the lowest same-speaker one, Diane's 2 s reference (0.674). What is wrongly named at every
threshold (9.7% / 8.4% / 0.0%) is the diarization's, not the matching's: with 2 s references cut out, JFK's
remaining 3-6 s merge into Sheila's speaker (pause_in_first_window) or take the fifth voice along
(meeting_95s), and the merged speaker carries one name for both voices (the "mixed" pairs).
Chosen: 0.6 (DiarizationConfig.speaker_match_threshold). It gives the plateau's accuracy at every length,
and a wrong name costs more than a missing one, so it sits nearer the same-speaker side of the gap: 0.14
above the highest different-speaker similarity, 0.07 below the lowest same-speaker one with 2 s references
and 0.20 below it with 5 s or more. Only CAM++ (the embedded pipeline) is measured here: a pretrained
pyannote pipeline embeds with another model (WeSpeaker ResNet34), whose similarities differ; measure it with
this benchmark before relying on the default.
"""

from __future__ import annotations

import argparse
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from core.audio import SAMPLE_RATE_HZ
from core.transcript import REFERENCE_MAX_S, REFERENCE_MIN_S, SpeakerReference, SpeakerTurn
from deployments.diarization import (
    DiarizationConfig,
    DiarizationHolder,
    _annotation,
    _apply,
    _embed,
    _reported_centroids,
    _turns,
)
from deployments.speaker_matching import cosine_similarities, match_speakers
from tests.real_speech import NOISE_DBFS, RealSpeech, build, forever_clip

FILES = ("pause_in_first_window", "meeting_95s")
LENGTHS_S = (2.0, 5.0, 10.0)
THRESHOLDS = tuple(round(0.20 + 0.05 * i, 2) for i in range(14))  # 0.20 .. 0.85
MIN_REST_S = 2.0  # speech a speaker must keep after its reference is cut out
ABSENT_VOICE = "forever"  # its reference goes with a file it is not in
FRAME_S = 0.01


@dataclass
class Run:
    """One diarization of a file's rest, with everything the threshold sweep needs."""

    file: str
    length_s: float
    speech: RealSpeech
    muted: list[tuple[float, float]]
    names: list[str]  # the references' speakers, in order
    similarity: np.ndarray  # (diarized speakers, references)
    speakers: list[str]  # pipeline labels, first appearance
    voice_of: dict[str, str]  # pipeline label -> the voice with most of its time
    share_of: dict[str, dict[str, float]]  # pipeline label -> voice -> share of its one-voice time
    centroids: np.ndarray
    reference_embeddings: np.ndarray
    turns: list[SpeakerTurn]  # labelled with pipeline labels


def solo_spans(turns: tuple[tuple[str, float, float], ...], speaker: str) -> list[tuple[float, float]]:
    """The parts of `speaker`'s turns where no other voice speaks, in time order, seconds."""
    spans = []
    for who, start, end in turns:
        if who != speaker:
            continue
        pieces = [(start, end)]
        for other, a, b in turns:
            if other == speaker:
                continue
            pieces = [p for s, e in pieces for p in ((s, min(e, a)), (max(s, b), e)) if p[1] - p[0] > 1e-6]
        spans.extend(pieces)
    return sorted(spans)


def first_seconds(spans: list[tuple[float, float]], length_s: float) -> list[tuple[float, float]]:
    """The first `length_s` seconds of `spans`, as spans."""
    out, left = [], length_s
    for start, end in spans:
        take = min(end - start, left)
        out.append((start, start + take))
        left -= take
        if left <= 1e-9:
            return out
    raise ValueError(f"only {length_s - left:.1f} s of speech, not {length_s}")


def samples(audio: np.ndarray, spans: list[tuple[float, float]]) -> np.ndarray:
    """The samples of `spans`, joined; exactly round(total * 16 kHz) of them."""
    total = round(sum(e - s for s, e in spans) * SAMPLE_RATE_HZ)
    joined = np.concatenate([audio[round(s * SAMPLE_RATE_HZ):round(e * SAMPLE_RATE_HZ)] for s, e in spans])
    return np.resize(joined, total).astype(np.float32)  # rounding may leave a sample short or over


def muted(speech: RealSpeech, spans: list[tuple[float, float]]) -> np.ndarray:
    """The file with `spans` replaced by noise at the file's own background level."""
    audio = np.array(speech.audio)
    rng = np.random.default_rng(zlib.crc32(speech.name.encode()) + 1)
    for start, end in spans:
        a, b = round(start * SAMPLE_RATE_HZ), round(end * SAMPLE_RATE_HZ)
        audio[a:b] = rng.standard_normal(b - a).astype(np.float32) * np.float32(10 ** (NOISE_DBFS / 20))
    return audio


def frame_voices(speech: RealSpeech, muted_spans: list[tuple[float, float]]) -> np.ndarray:
    """The voice of each 10 ms frame of the rest ('' where none, '+' where several speak)."""
    frames = np.full(int(np.ceil(speech.duration_s / FRAME_S)), "", dtype=object)
    for who, start, end in speech.turns:
        sl = slice(round(start / FRAME_S), round(end / FRAME_S))
        frames[sl] = np.where((frames[sl] == "") | (frames[sl] == who), who, "+")
    for start, end in muted_spans:
        frames[round(start / FRAME_S):round(end / FRAME_S)] = ""
    return frames


def frame_labels(turns: list[SpeakerTurn], n: int) -> np.ndarray:
    frames = np.full(n, "", dtype=object)
    for t in turns:
        frames[round(t.start_s / FRAME_S):round(t.end_s / FRAME_S)] = t.speaker
    return frames


def diarize_rest(holder: DiarizationHolder, speech: RealSpeech, length_s: float) -> Run:
    """Cut references of `length_s`, mute them, diarize the rest; similarities of every pair."""
    references: list[SpeakerReference] = []
    cut: list[tuple[float, float]] = []
    for voice in speech.speakers:
        spans = solo_spans(speech.turns, voice)
        if sum(e - s for s, e in spans) < length_s + MIN_REST_S:
            continue
        part = first_seconds(spans, length_s)
        references.append(SpeakerReference(voice, samples(speech.audio, part)))
        cut.extend(part)
    if ABSENT_VOICE not in speech.speakers:
        clip = forever_clip()
        spans = [(a, b) for _, a, b in clip.turns]
        part = first_seconds(spans, min(length_s, sum(b - a for a, b in spans)))
        audio = samples(clip.audio, part)
        if len(audio) >= REFERENCE_MIN_S * SAMPLE_RATE_HZ:
            references.append(SpeakerReference(ABSENT_VOICE, audio))
    clips = [r.audio for r in references if r.audio is not None]
    assert all(REFERENCE_MIN_S <= clip.size / SAMPLE_RATE_HZ <= REFERENCE_MAX_S for clip in clips)
    rest = muted(speech, cut)

    def work() -> tuple[list[SpeakerTurn], list[str], np.ndarray, np.ndarray]:
        pipeline = holder.model
        output = _apply(pipeline, rest)
        annotation = _annotation(output, exclusive=holder.config.exclusive_turns)
        labels, centroids = _reported_centroids(output, annotation)
        turns = _turns(annotation, speech.duration_s, {label: str(label) for label in labels})
        return turns, [str(label) for label in labels], centroids, _embed(pipeline._embedding, clips)

    turns, labels, centroids, embeddings = holder.run(work)
    voices, hyp = frame_voices(speech, cut), frame_labels(turns, int(np.ceil(speech.duration_s / FRAME_S)))
    voice_of, share_of = {}, {}
    for label in labels:
        heard = voices[(hyp == label) & (voices != "") & (voices != "+")]
        values, counts = np.unique(heard.astype(str), return_counts=True)
        voice_of[label] = str(values[np.argmax(counts)]) if len(values) else "?"
        share_of[label] = {str(v): c / counts.sum() for v, c in zip(values, counts, strict=True)}
    return Run(speech.name, length_s, speech, cut, [r.name for r in references],
               cosine_similarities(centroids, embeddings), labels, voice_of, share_of, centroids, embeddings,
               turns)


def pair_kind(run: Run, label: str, name: str) -> str:
    """'same' where the reference's voice has most of the diarized speaker's time, 'different' where it
    has at most 10%, 'mixed' in between (a speaker the diarization merged from two voices)."""
    share = run.share_of[label].get(name, 0.0)
    return "same" if share > 0.5 else "different" if share <= 0.1 else "mixed"


def best_names(run: Run) -> dict[str, str]:
    """The best any matching could do on this diarization: each speaker named after the voice with most of
    its time, where that voice has a reference, one-to-one."""
    share = np.array([[run.share_of[label].get(name, 0.0) for name in run.names] for label in run.speakers])
    if share.size == 0:
        return {}
    rows, columns = linear_sum_assignment(share, maximize=True)
    return {run.speakers[r]: run.names[c] for r, c in zip(rows, columns, strict=True) if share[r, c] > 0.5}


def named_frames(run: Run, names: dict[str, str]) -> np.ndarray:
    """10 ms frames of the rest's one-voice speech: [correctly labelled, wrongly named, known but unnamed,
    all], with `names` {pipeline label: name}."""
    n = int(np.ceil(run.speech.duration_s / FRAME_S))
    voices = frame_voices(run.speech, run.muted)
    hyp = frame_labels(run.turns, n)
    named = np.array([names.get(label, "") for label in hyp], dtype=object)
    scored = (voices != "") & (voices != "+")
    known = np.isin(voices.astype(str), run.names)
    correct = np.where(known, named == voices, named == "") & scored
    wrong = (named != "") & (named != voices) & scored
    missed = known & (named == "") & scored
    return np.array([correct.sum(), wrong.sum(), missed.sum(), scored.sum()])


def print_pairs(run: Run) -> None:
    print(f"\n{run.file}, {run.length_s:g} s references: cosine similarity, reference (rows) x diarized speaker")
    print("  (each diarized speaker shown as the voice with most of its time, and that voice's share)")
    width = max(len(run.voice_of[s]) + 7 for s in run.speakers) if run.speakers else 8
    head = "".join(f"{run.voice_of[s]:>{width - 5}} {run.share_of[s].get(run.voice_of[s], 0):4.0%}"
                   for s in run.speakers)
    print(f"  {'':<10}{head}")
    for j, name in enumerate(run.names):
        row = "".join(f"{run.similarity[i, j]:>{width}.3f}" for i in range(len(run.speakers)))
        print(f"  {name:<10}{row}")


def span(values: list[float]) -> str:
    return f"{min(values):6.3f} {float(np.median(values)):6.3f} {max(values):6.3f}  n={len(values):<3}" \
        if values else f"{'-':>27}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", nargs="+", default=list(FILES))
    parser.add_argument("--lengths", nargs="+", type=float, default=list(LENGTHS_S))
    args = parser.parse_args()

    holder = DiarizationHolder(DiarizationConfig())
    try:
        runs = [diarize_rest(holder, build(name), length) for length in args.lengths for name in args.files]
    finally:
        holder.close()
    for run in runs:
        print_pairs(run)

    print("\ncosine similarity, reference vs diarized speaker centroid (min median max); 'mixed': the "
          "reference's voice has 10-50% of the speaker's time")
    print(f"  {'length':>6}   {'same speaker':<29}{'different speaker':<29}{'mixed':<29}"
          "gap (min same - max different)")
    for length in args.lengths:
        kinds: dict[str, list[float]] = {"same": [], "different": [], "mixed": []}
        for run in (r for r in runs if r.length_s == length):
            for i, label in enumerate(run.speakers):
                for j, name in enumerate(run.names):
                    kinds[pair_kind(run, label, name)].append(float(run.similarity[i, j]))
        same, other = kinds["same"], kinds["different"]
        gap = f"{min(same) - max(other):+.3f}" if same and other else "-"
        print(f"  {length:>5g}s   {span(same):<29}{span(other):<29}{span(kinds['mixed']):<29}{gap}")

    print("\nshare of the rest's speech time: correct / wrongly named / known voice left unnamed (both files)")
    print(f"  {'threshold':>9}" + "".join(f"{f'{length:g} s references':>24}" for length in args.lengths))
    def cell(length: float, names_of: Callable[[Run], dict[str, str]]) -> str:
        frames = sum(named_frames(r, names_of(r)) for r in runs if r.length_s == length)
        c, w, m = 100 * frames[:3] / max(frames[3], 1)
        return f"{c:5.1f}% {w:5.1f}% {m:5.1f}%"

    for threshold in THRESHOLDS:
        def matched(r: Run, t: float = threshold) -> dict[str, str]:
            return match_speakers(r.speakers, r.centroids, r.names, r.reference_embeddings, t)
        print(f"  {threshold:>9.2f}" + "".join(f"{cell(length, matched):>24}" for length in args.lengths))
    print(f"  {'best':>9}" + "".join(f"{cell(length, best_names):>24}" for length in args.lengths)
          + "   (each speaker named after its majority voice: what this diarization allows)")


if __name__ == "__main__":
    main()
