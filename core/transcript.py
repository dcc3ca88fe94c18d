"""Value types that travel between the deployments and the ingress.

Plain dataclasses: they pickle cheaply through Ray's object store and carry no model state.
All times are seconds from the start of the decoded audio.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

WordSource = Literal["alignment", "whisper"]


@dataclass(frozen=True)
class Word:
    """One word with its time span; `speaker` is set once turns are assigned."""

    text: str
    start_s: float
    end_s: float
    probability: float | None = None
    speaker: str | None = None


@dataclass(frozen=True)
class Segment:
    """One stretch of speech as the recogniser returned it, with its words when known."""

    text: str
    start_s: float
    end_s: float
    words: tuple[Word, ...] = ()
    speaker: str | None = None
    avg_logprob: float | None = None

    def with_words(self, words: tuple[Word, ...]) -> Segment:
        return replace(self, words=words)


@dataclass(frozen=True)
class SpeakerTurn:
    """A span of time in which one speaker talks (turns of different speakers may overlap)."""

    speaker: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class AsrOptions:
    """Per-request decoding options for the ASR deployment."""

    task: Literal["transcribe", "translate"] = "transcribe"
    model: str | None = None  # the id the client asked for; None when it used an alias such as whisper-1
    language: str | None = None
    prompt: str | None = None
    temperature: float | None = None
    word_timestamps: bool = False


@dataclass(frozen=True)
class AsrResult:
    """What the ASR deployment returns: segments, the language used and where words came from."""

    language: str
    segments: tuple[Segment, ...]
    duration_s: float
    word_source: WordSource | None = None


@dataclass(frozen=True)
class SpeakerOptions:
    """Speaker-count hints for diarization; all optional."""

    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None


@dataclass
class Transcript:
    """The final result the ingress renders in the requested format."""

    task: Literal["transcribe", "translate"]
    language: str
    duration_s: float
    segments: list[Segment] = field(default_factory=list)
    word_source: WordSource | None = None
    speakers: list[str] = field(default_factory=list)
    # What of the upload could not be decoded, in words for the user (serve_app.media).
    warnings: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        return " ".join(s.text.strip() for s in self.segments if s.text.strip())

    @property
    def words(self) -> list[Word]:
        return [w for s in self.segments for w in s.words]
