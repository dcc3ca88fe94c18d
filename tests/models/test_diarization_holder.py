"""The diarization holder on real bundled weights (segmentation-3.0 + CAM++), without Ray.

Bounds are measured values plus margin, on the 2-core machine with the tuned parameters:
- pyannote's real 30 s call: 2 speakers, DER 0.104 with exclusive turns (the reference overlaps in
  places that one-speaker-at-a-time turns cannot cover), 0.052 with overlapping turns;
- tests/speech.py's 3-voice conversation: 3 speakers, every turn boundary within 0.07 s of its
  voiced span.
"""

from __future__ import annotations

import io
import wave
from collections import Counter
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from pyannote.core import Annotation, Segment, Timeline
from pyannote.metrics.diarization import DiarizationErrorRate

from core.audio import SAMPLE_RATE_HZ
from core.errors import ModelUnavailable
from core.transcript import SpeakerOptions, SpeakerTurn
from deployments.diarization import HUB_TOKEN_ENV, DiarizationConfig, DiarizationHolder, hub_token
from tests.audio_samples import pyannote_sample_turns, pyannote_sample_wav_bytes
from tests.speech import sample_conversation

pytestmark = pytest.mark.models

DER_BOUND_EXCLUSIVE = 0.15
DER_BOUND_OVERLAPPING = 0.10
BOUNDARY_TOLERANCE_S = 0.25
CALL_DURATION_S = 30.0


@pytest.fixture(scope="module")
def holder() -> Iterator[DiarizationHolder]:
    holder = DiarizationHolder(DiarizationConfig())
    yield holder
    holder.close()


def _phone_call() -> np.ndarray:
    """The call as 16 kHz float32, read-only like an array from Ray's object store.

    Read with the standard library: decoding through faster-whisper would load CTranslate2 into
    this process, which slows torch down (DESIGN.md).
    """
    with wave.open(io.BytesIO(pyannote_sample_wav_bytes())) as w:
        assert w.getframerate() == SAMPLE_RATE_HZ and w.getnchannels() == 1 and w.getsampwidth() == 2
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0
    samples.flags.writeable = False
    return samples


def _annotation(turns: list[SpeakerTurn]) -> Annotation:
    annotation = Annotation()
    for turn in turns:
        annotation[Segment(turn.start_s, turn.end_s)] = turn.speaker
    return annotation


def _der(turns: list[SpeakerTurn]) -> float:
    """Diarization error rate against the call's reference, no collar, over the whole 30 s."""
    reference = _annotation([SpeakerTurn(*turn) for turn in pyannote_sample_turns()])
    metric = DiarizationErrorRate(collar=0.0)
    return float(metric(reference, _annotation(turns), uem=Timeline([Segment(0.0, CALL_DURATION_S)])))


def _check_shape(turns: list[SpeakerTurn], duration_s: float) -> None:
    """Time order, inside the audio, labels SPEAKER_00, 01... in order of first appearance."""
    first_seen = list(dict.fromkeys(t.speaker for t in turns))
    assert first_seen == [f"SPEAKER_{i:02d}" for i in range(len(first_seen))]
    assert [t.start_s for t in turns] == sorted(t.start_s for t in turns)
    for t in turns:
        assert 0.0 <= t.start_s < t.end_s <= duration_s


def test_two_speakers_in_a_real_phone_call(holder: DiarizationHolder):
    turns = holder.run(holder.diarize, _phone_call(), SpeakerOptions())
    _check_shape(turns, CALL_DURATION_S)
    assert {t.speaker for t in turns} == {"SPEAKER_00", "SPEAKER_01"}
    # exclusive turns: one speaker at a time, so every word gets exactly one
    for before, after in pairwise(turns):
        assert before.end_s <= after.start_s
    assert _der(turns) < DER_BOUND_EXCLUSIVE


def test_overlapping_turns_apply_without_a_reload(holder: DiarizationHolder):
    model, config = holder.model, holder.config
    try:
        assert holder.reconfigure(config.model_copy(update={"exclusive_turns": False})) is None
        assert holder.model is model
        turns = holder.run(holder.diarize, _phone_call(), SpeakerOptions())
    finally:
        holder.reconfigure(config)
    _check_shape(turns, CALL_DURATION_S)
    assert len({t.speaker for t in turns}) == 2
    assert any(a.speaker != b.speaker and a.end_s > b.start_s for a, b in pairwise(turns))
    assert _der(turns) < DER_BOUND_OVERLAPPING


def test_a_config_that_cannot_load_changes_nothing(holder: DiarizationHolder):
    model = holder.model
    with pytest.raises(ModelUnavailable):
        holder.reconfigure(holder.config.model_copy(update={"model": "./no-such-pipeline"}))
    assert holder.model is model and holder.config.model == "embedded"


@pytest.mark.parametrize(("options", "expected"), [
    (SpeakerOptions(num_speakers=3), 3),
    (SpeakerOptions(min_speakers=3), 3),
    (SpeakerOptions(max_speakers=1), 1),
], ids=["num_speakers=3", "min_speakers=3", "max_speakers=1"])
def test_speaker_count_hints_are_honoured(holder: DiarizationHolder, options: SpeakerOptions, expected: int):
    turns = holder.run(holder.diarize, _phone_call(), options)
    _check_shape(turns, CALL_DURATION_S)
    assert len({t.speaker for t in turns}) == expected


def test_silence_and_very_short_audio(holder: DiarizationHolder):
    rng = np.random.default_rng(0)
    assert holder.run(holder.diarize, np.zeros(0, np.float32), SpeakerOptions()) == []
    assert holder.run(holder.diarize, np.zeros(5 * SAMPLE_RATE_HZ, np.float32), SpeakerOptions()) == []
    # shorter than one 25 ms analysis frame
    tiny = (0.1 * rng.standard_normal(399)).astype(np.float32)
    assert holder.run(holder.diarize, tiny, SpeakerOptions()) == []
    # faint noise: whatever it finds must stay inside the audio
    noise = (1e-3 * rng.standard_normal(SAMPLE_RATE_HZ)).astype(np.float32)
    _check_shape(holder.run(holder.diarize, noise, SpeakerOptions()), 1.0)
    # 0.7 s of one speaker ("Oh, hello.")
    excerpt = _phone_call()[round(8.3 * SAMPLE_RATE_HZ):round(9.0 * SAMPLE_RATE_HZ)]
    turns = holder.run(holder.diarize, excerpt, SpeakerOptions())
    _check_shape(turns, len(excerpt) / SAMPLE_RATE_HZ)
    assert {t.speaker for t in turns} == {"SPEAKER_00"}


def test_only_mono_audio(holder: DiarizationHolder):
    with pytest.raises(ValueError, match="1-D"):
        holder.run(holder.diarize, np.zeros((2, SAMPLE_RATE_HZ), np.float32), SpeakerOptions())


def test_three_voice_conversation(holder: DiarizationHolder):
    audio, reference = sample_conversation()
    turns = holder.run(holder.diarize, audio, SpeakerOptions())
    duration_s = len(audio) / SAMPLE_RATE_HZ
    _check_shape(turns, duration_s)
    hypothesis = _annotation(turns)
    assert len(hypothesis.labels()) == len({r.speaker for r in reference}) == 3

    # Each voice maps to one label, a different one per voice ...
    label_of: dict[str, Counter] = {}
    for r in reference:
        label = hypothesis.crop(Segment(r.start_s, r.end_s)).argmax()
        label_of.setdefault(r.speaker, Counter())[label] += 1
    mapping = {voice: labels.most_common(1)[0][0] for voice, labels in label_of.items()}
    assert all(len(labels) == 1 for labels in label_of.values()), label_of
    assert len(set(mapping.values())) == 3

    # ... and its turns start and end where the voice does.
    for r in reference:
        spans = [s for s in hypothesis.label_timeline(mapping[r.speaker])
                 if s.end > r.start_s and s.start < r.end_s]
        assert abs(spans[0].start - r.start_s) < BOUNDARY_TOLERANCE_S, (r, spans)
        assert abs(spans[-1].end - r.end_s) < BOUNDARY_TOLERANCE_S, (r, spans)


def test_teardown_reports_memory():
    holder = DiarizationHolder(DiarizationConfig())
    assert holder.run(holder.diarize, np.zeros(SAMPLE_RATE_HZ, np.float32), SpeakerOptions()) == []
    report = holder.close()
    assert report is not None and report.model == "embedded" and report.device == "cpu"
    assert report.loaded.rss_bytes > report.baseline.rss_bytes
    assert report.seconds >= 0
    as_dict = report.as_dict()
    assert {"baseline", "loaded", "after", "residue_bytes", "freed_bytes", "seconds"} <= set(as_dict)
    assert holder.model is None and holder.last_teardown is report
    assert holder.status()["last_teardown"]["model"] == "embedded"
    assert holder.close() is None
    with pytest.raises(ModelUnavailable):
        holder.diarize(np.zeros(SAMPLE_RATE_HZ, np.float32), SpeakerOptions())


def test_a_local_pretrained_pipeline_directory_loads_without_the_hub(voice_activity_pipeline: Path):
    holder = DiarizationHolder(DiarizationConfig(model=str(voice_activity_pipeline)))
    try:
        turns = holder.run(holder.diarize, _phone_call(), SpeakerOptions())
    finally:
        holder.close()
    _check_shape(turns, CALL_DURATION_S)
    assert {t.speaker for t in turns} == {"SPEAKER_00"} and sum(t.end_s - t.start_s for t in turns) > 15


def test_hub_token_comes_from_the_environment_and_stays_out_of_errors(monkeypatch, caplog, capsys):
    secret = "hf_not_a_real_token_0123456789"
    monkeypatch.setenv(HUB_TOKEN_ENV, secret)
    assert not any("token" in name for name in DiarizationConfig.model_fields)
    token = hub_token()
    assert token is not None and token.get_secret_value() == secret and secret not in repr(token)
    with pytest.raises(ModelUnavailable) as raised:  # offline: the hub id cannot resolve
        DiarizationHolder(DiarizationConfig(model="example-org/no-such-pipeline"))
    assert secret not in str(raised.value) and secret not in caplog.text
    assert secret not in "".join(capsys.readouterr())
