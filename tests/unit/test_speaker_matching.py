"""Naming diarized speakers after known voices (deployments/speaker_matching.py), on crafted embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from core.audio import SAMPLE_RATE_HZ
from core.errors import BadRequest
from core.transcript import SpeakerOptions, SpeakerReference
from deployments.speaker_matching import (
    PARAM,
    anonymous_label,
    check_references,
    cosine_similarities,
    match_speakers,
)

THRESHOLD = 0.5


def unit(*angles_deg: float) -> np.ndarray:
    """Unit vectors in a plane at the given angles, padded to 8 dimensions: cos(a - b) is their similarity."""
    rad = np.radians(angles_deg)
    return np.pad(np.stack([np.cos(rad), np.sin(rad)], axis=1), ((0, 0), (0, 6)))


def basis(*indices: int, dim: int = 8) -> np.ndarray:
    return np.eye(dim)[list(indices)]


def test_each_speaker_gets_the_name_of_its_own_voice():
    speakers = ["SPEAKER_00", "SPEAKER_01", "SPEAKER_02"]
    # references given in another order than the speakers, and scaled: only direction counts
    names = ["carol", "alice", "bob"]
    refs = 3.0 * basis(2, 0, 1) + 0.1 * basis(3, 3, 3)
    assert match_speakers(speakers, basis(0, 1, 2), names, refs, THRESHOLD) == {
        "SPEAKER_00": "alice", "SPEAKER_01": "bob", "SPEAKER_02": "carol"}


def test_one_to_one_the_best_total_not_each_speakers_best():
    # Both speakers are closest to alice's reference (10 and 20 degrees away); bob's is 30 degrees from the
    # second speaker: each speaker's best would give alice twice.
    similarity = cosine_similarities(unit(0, 30), unit(10, 60))
    assert similarity.argmax(axis=1).tolist() == [0, 0]
    names = match_speakers(["S0", "S1"], unit(0, 30), ["alice", "bob"], unit(10, 60), THRESHOLD)
    assert names == {"S0": "alice", "S1": "bob"}
    assert len(set(names.values())) == len(names)


def test_below_the_threshold_a_speaker_stays_anonymous():
    # cos(50) = 0.643, cos(70) = 0.342
    assert match_speakers(["S0"], unit(0), ["alice"], unit(50), THRESHOLD) == {"S0": "alice"}
    assert match_speakers(["S0"], unit(0), ["alice"], unit(70), THRESHOLD) == {}
    # exactly at the threshold counts as a match
    assert match_speakers(["S0"], unit(0), ["alice"], unit(60), float(np.cos(np.radians(60)))) == {"S0": "alice"}


def test_an_unknown_voice_keeps_its_label_while_the_others_are_named():
    speakers = ["S0", "S1", "S2"]
    embeddings = basis(0, 1, 2)  # S2's voice has no reference
    assert match_speakers(speakers, embeddings, ["alice", "bob"], basis(0, 1), THRESHOLD) == {
        "S0": "alice", "S1": "bob"}


def test_a_reference_of_a_voice_not_in_the_recording_names_nobody():
    assert match_speakers(["S0", "S1"], basis(0, 1), ["alice", "stranger"], basis(0, 5), THRESHOLD) == {
        "S0": "alice"}


def test_more_references_than_speakers():
    names = ["alice", "bob", "carol", "dave"]
    assert match_speakers(["S0"], basis(2), names, basis(0, 1, 2, 3), THRESHOLD) == {"S0": "carol"}


def test_fewer_references_than_speakers():
    assert match_speakers(["S0", "S1", "S2", "S3"], basis(0, 1, 2, 3), ["bob"], basis(1), THRESHOLD) == {
        "S1": "bob"}


def test_a_pair_below_the_threshold_never_costs_a_match_above_it():
    # Raw similarities would pair S0-bob (0.45) with S1-alice (0.6) = 1.05 over S0-alice (0.9) plus
    # S1-bob (-0.5) = 0.4, and drop S0-bob afterwards: S0, alice's closest match, would lose its name.
    similarity = np.array([[0.9, 0.45], [0.6, -0.5]])
    names = match_speakers(["S0", "S1"], similarity, ["alice", "bob"], np.eye(2), THRESHOLD)
    assert names == {"S0": "alice"}


def test_exact_ties_go_to_the_earlier_speaker_and_the_earlier_reference():
    # two speakers with the same voice embedding, one reference: the first speaker gets it
    assert match_speakers(["S0", "S1"], basis(0, 0), ["alice"], basis(0), THRESHOLD) == {"S0": "alice"}
    # one speaker, two identical references: the first name is used
    assert match_speakers(["S0"], basis(0), ["alice", "alias"], basis(0, 0), THRESHOLD) == {"S0": "alice"}
    # and the answer does not change from call to call
    results = {tuple(match_speakers(["S0", "S1"], basis(0, 0), ["a", "b"], basis(0, 0), THRESHOLD).items())
               for _ in range(5)}
    assert results == {(("S0", "a"), ("S1", "b"))}


def test_speakers_without_a_usable_embedding_are_never_named():
    # pyannote pads a centroid it has none for with zeros; a NaN can come from an empty mean
    embeddings = np.vstack([np.zeros(8), np.full(8, np.nan), basis(1)[0]])
    similarity = cosine_similarities(embeddings, basis(0, 1))
    assert np.isnan(similarity[:2]).all() and similarity[2].tolist() == [0.0, 1.0]
    assert match_speakers(["S0", "S1", "S2"], embeddings, ["alice", "bob"], basis(0, 1), THRESHOLD) == {
        "S2": "bob"}


def test_nothing_to_match():
    assert match_speakers([], np.zeros((0, 8)), ["alice"], basis(0), THRESHOLD) == {}
    assert match_speakers(["S0"], basis(0), [], np.zeros((0, 8)), THRESHOLD) == {}


@pytest.mark.parametrize("threshold", [0.0, -0.2, 1.5])
def test_a_threshold_outside_0_1_is_a_programming_error(threshold: float):
    with pytest.raises(ValueError, match="threshold"):
        match_speakers(["S0"], basis(0), ["alice"], basis(0), threshold)


def test_mismatched_lengths_are_a_programming_error():
    with pytest.raises(ValueError, match="2 speakers with 1 embeddings"):
        match_speakers(["S0", "S1"], basis(0), ["alice"], basis(0), THRESHOLD)


# --- the references themselves ----------------------------------------------------------------------


def reference(name: str, seconds: float) -> SpeakerReference:
    return SpeakerReference(name, np.zeros(round(seconds * SAMPLE_RATE_HZ), np.float32))


@pytest.mark.parametrize("seconds", [2.0, 5.0, 10.0])
def test_references_of_2_to_10_seconds_pass(seconds: float):
    check_references([reference("alice", seconds), reference("bob", 3.0)])
    check_references([])


@pytest.mark.parametrize(("seconds", "shown"), [(1.0, "1.00 s"), (1.99, "1.99 s"), (10.01, "10.01 s"),
                                                (12.0, "12.00 s"), (0.0, "0.00 s")])
def test_a_reference_of_another_length_is_refused_by_name(seconds: float, shown: str):
    with pytest.raises(BadRequest) as raised:
        check_references([reference("alice", 3.0), reference("bob", seconds)])
    error = raised.value
    assert error.param == PARAM == "known_speaker_references" and error.status_code == 400
    assert "[1] (bob)" in error.message and shown in error.message and "2-10 s" in error.message


@pytest.mark.parametrize(("references", "message"), [
    ([reference("alice", 3), reference("alice", 4)], "'alice' is given twice"),
    ([reference("  ", 3)], "has no speaker name"),
    ([reference("SPEAKER_01", 3)], "how unnamed speakers are labelled"),
    ([SpeakerReference("alice", np.zeros((2, 3 * SAMPLE_RATE_HZ), np.float32))], "not mono"),
])
def test_other_unusable_references_are_refused(references: list[SpeakerReference], message: str):
    with pytest.raises(BadRequest, match=message):
        check_references(references)


def enrolled(name: str, embedding: object = None) -> SpeakerReference:
    vector = basis(0)[0] if embedding is None else np.asarray(embedding)
    return SpeakerReference(name, embedding=vector, embedding_model="embedded:campplus")


def test_enrolled_voices_pass_without_audio_beside_clips():
    check_references([enrolled("alice"), reference("bob", 3.0), enrolled("carol", 0.3 * basis(1)[0])])


@pytest.mark.parametrize("embedding", [np.zeros(8), np.full(8, np.nan), np.array([1.0, np.inf]), basis(0, 1),
                                       np.zeros(0)], ids=["zeros", "nan", "inf", "2-D", "empty"])
def test_an_unusable_enrolled_voice_is_refused_by_name(embedding: np.ndarray):
    with pytest.raises(BadRequest) as raised:
        check_references([reference("alice", 3.0), enrolled("bob", embedding)])
    assert raised.value.param == "known_speaker_names"
    assert raised.value.message.startswith("known_speaker_names[1] (bob): the enrolled voice is not a usable")


def test_names_of_enrolled_voices_are_checked_like_the_others():
    with pytest.raises(BadRequest, match="'alice' is given twice"):
        check_references([reference("alice", 3.0), enrolled("alice")])
    with pytest.raises(BadRequest, match="how unnamed speakers are labelled"):
        check_references([enrolled("SPEAKER_00")])


def test_a_reference_is_a_clip_or_an_enrolled_voice_never_both():
    clip = np.zeros(3 * SAMPLE_RATE_HZ, np.float32)
    assert SpeakerReference("alice", clip).audio is clip and SpeakerReference("alice", clip).embedding is None
    assert SpeakerReference("alice", embedding=basis(0)[0]).embedding_model is None
    with pytest.raises(ValueError, match="exactly one of audio and embedding"):
        SpeakerReference("alice")
    with pytest.raises(ValueError, match="exactly one of audio and embedding"):
        SpeakerReference("alice", clip, embedding=basis(0)[0])
    with pytest.raises(ValueError, match="no embedding"):
        SpeakerReference("alice", clip, embedding_model="embedded:campplus")


def test_anonymous_labels():
    assert [anonymous_label(i) for i in (0, 1, 12)] == ["SPEAKER_00", "SPEAKER_01", "SPEAKER_12"]


def test_options_with_references_stay_hashable_and_comparable():
    alice = reference("alice", 3)
    options = SpeakerOptions(num_speakers=2, references=(alice,))
    assert options == SpeakerOptions(num_speakers=2, references=(alice,))
    assert options != SpeakerOptions(num_speakers=2)
    assert hash(options) == hash(SpeakerOptions(num_speakers=2, references=(alice,)))
    assert SpeakerOptions().references == ()
    with pytest.raises(AttributeError):
        alice.name = "bob"  # type: ignore[misc]
