"""Naming diarized speakers after known voices: checks on the references (clips, or the embeddings of enrolled
speakers), and the one-to-one matching of speaker embeddings to reference embeddings by cosine similarity.

Pure numpy and scipy: the diarization holder computes the embeddings (deployments/diarization.py) and
asks this module which speaker gets which name. The threshold is the holder's config
(`DiarizationConfig.speaker_match_threshold`); how it was chosen is in benchmarks/speaker_matching.py.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from core.audio import SAMPLE_RATE_HZ
from core.errors import BadRequest
from core.transcript import REFERENCE_MAX_S, REFERENCE_MIN_S, SpeakerReference

PARAM = "known_speaker_references"
# An enrolled speaker is named in a request by name alone: errors about its stored voice point there.
NAMES_PARAM = "known_speaker_names"
# Speakers nobody named are labelled SPEAKER_00, SPEAKER_01...: a known name must not look like one.
_ANONYMOUS_LABEL = re.compile(r"SPEAKER_\d+")


def anonymous_label(index: int) -> str:
    """The label of the `index`-th unnamed speaker (0-based, in order of first appearance): SPEAKER_00..."""
    return f"SPEAKER_{index:02d}"


def check_references(references: Sequence[SpeakerReference]) -> None:
    """Refuse (BadRequest) references that are unnamed, named like an anonymous speaker (SPEAKER_00) or that
    share a name; whose audio is not a clip `check_clip` accepts; or whose enrolled embedding is not a 1-D,
    finite, non-zero vector. References are in the order of the request's known_speaker_names."""
    seen: set[str] = set()
    for index, reference in enumerate(references):
        name = reference.name
        if not name.strip():
            raise BadRequest(f"{PARAM}[{index}] has no speaker name", param=PARAM)
        if _ANONYMOUS_LABEL.fullmatch(name):
            raise BadRequest(f"{PARAM}[{index}]: {name!r} is how unnamed speakers are labelled; choose another name",
                             param=PARAM)
        if name in seen:
            raise BadRequest(f"{PARAM}[{index}]: the name {name!r} is given twice; one reference per speaker",
                             param=PARAM)
        seen.add(name)
        if reference.audio is not None:
            check_clip(reference.audio, f"{PARAM}[{index}] ({name})", PARAM)
        else:
            _check_embedding(reference.embedding, f"{NAMES_PARAM}[{index}] ({name})")


def check_clip(audio: np.ndarray, what: str, param: str) -> None:
    """Refuse (BadRequest on `param`, the message starting with `what`) a voice clip that is not 1-D or not
    REFERENCE_MIN_S-REFERENCE_MAX_S long at 16 kHz."""
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise BadRequest(f"{what} is not mono 1-D audio (shape {audio.shape})", param=param)
    duration_s = audio.size / SAMPLE_RATE_HZ
    if not REFERENCE_MIN_S <= duration_s <= REFERENCE_MAX_S:
        raise BadRequest(f"{what} is {duration_s:.2f} s long: each reference must be "
                         f"{REFERENCE_MIN_S:g}-{REFERENCE_MAX_S:g} s of that speaker alone", param=param)


def _check_embedding(embedding: np.ndarray | None, what: str) -> None:
    vector = np.asarray(embedding, dtype=np.float64)
    if vector.ndim != 1 or vector.size == 0 or not np.isfinite(vector).all() or not vector.any():
        raise BadRequest(f"{what}: the enrolled voice is not a usable embedding (a 1-D vector of finite numbers, "
                         "not all zero); enroll the speaker again", param=NAMES_PARAM)


def cosine_similarities(speakers: np.ndarray, references: np.ndarray) -> np.ndarray:
    """(num_speakers, num_references) cosine similarities of two stacks of embeddings; NaN where either
    embedding is all zeros or holds a NaN (pyannote pads the centroids it has none for with zeros)."""
    a = np.asarray(speakers, dtype=np.float64).reshape(len(speakers), -1)
    b = np.asarray(references, dtype=np.float64).reshape(len(references), -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
        # An all-zero row divides to NaN (0/0), and a NaN anywhere propagates through the product.
        return a @ b.T


def match_speakers(speakers: Sequence[str], speaker_embeddings: np.ndarray, names: Sequence[str],
                   reference_embeddings: np.ndarray, threshold: float) -> dict[str, str]:
    """{speaker label: name} for the diarized speakers that get a known name.

    One-to-one: each name goes to at most one speaker and each speaker gets at most one name, the pairs
    chosen to maximise the summed similarity of the pairs at or above `threshold` (> 0); a speaker whose
    best available reference is below it keeps its label. On an exact tie, the earlier speaker and the
    earlier reference in the order given win.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"the match threshold must be in (0, 1], not {threshold}")
    if len(speakers) != len(speaker_embeddings) or len(names) != len(reference_embeddings):
        raise ValueError(f"{len(speakers)} speakers with {len(speaker_embeddings)} embeddings, "
                         f"{len(names)} names with {len(reference_embeddings)} embeddings")
    if not speakers or not names:
        return {}
    similarity = cosine_similarities(speaker_embeddings, reference_embeddings)
    eligible = np.nan_to_num(similarity, nan=-np.inf) >= threshold
    # Pairs below the threshold gain nothing, so the assignment never trades a pair that clears it for one
    # that does not: on raw similarities, A-Y at 0.45 plus B-X at 0.6 beats A-X at 0.9 plus B-Y at -0.5,
    # and with a threshold of 0.5 A would lose the name it matches best.
    gain = np.where(eligible, similarity, 0.0)
    rows, columns = linear_sum_assignment(gain, maximize=True)
    return {speakers[r]: names[c] for r, c in zip(rows.tolist(), columns.tolist(), strict=True) if eligible[r, c]}
