"""Wire models of the HTTP API: OpenAI's audio fields plus our extensions."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.language import whisper_language_codes
from serve_app.formats import ResponseFormat

Task = Literal["transcribe", "translate"]
Granularity = Literal["word", "segment"]

# Formats whose rendering needs word timings.
_WORD_FORMATS = {"srt", "vtt", "diarized_json"}
_STREAM_FORMATS = ("json", "text", "diarized_json")  # OpenAI's; serve_app/streaming.py renders them
MAX_KNOWN_SPEAKERS = 8  # OpenAI takes 4


class TranscriptionRequest(BaseModel):
    """The form fields of POST /v1/audio/transcriptions and /v1/audio/translations (file aside)."""

    model_config = ConfigDict(extra="forbid")

    task: Task = "transcribe"
    model: str | None = Field(None, description="a model id from GET /v1/models; absent or an alias such as "
                              "whisper-1: the server's default model")
    language: str | None = Field(None, description="ISO 639-1 code of the spoken language; detected if absent")
    prompt: str | None = Field(None, max_length=2000, description="text to condition the decoder on")
    response_format: ResponseFormat = "json"
    temperature: float | None = Field(None, ge=0.0, le=1.0, allow_inf_nan=False,
                                      description="sampling temperature, 0 to 1")
    timestamp_granularities: list[Granularity] = Field(
        default_factory=lambda: ["segment"],  # type: ignore[arg-type]
        description="word and/or segment (verbose_json only)")
    diarize: bool = Field(False, description="label each segment and word with its speaker")
    num_speakers: int | None = Field(None, ge=1, le=64, description="exact number of speakers, if known")
    min_speakers: int | None = Field(None, ge=1, le=64, description="lower bound on the number of speakers")
    max_speakers: int | None = Field(None, ge=1, le=64, description="upper bound on the number of speakers")
    align: bool = Field(True, description="refine word timings with a wav2vec2 alignment model where one "
                        "exists for the language; otherwise Whisper's own word timings are used")
    max_line_chars: int | None = Field(None, ge=10, le=200, description="subtitle characters per line (srt/vtt)")
    max_cue_duration_s: float | None = Field(None, ge=0.5, le=60, allow_inf_nan=False,
                                             description="longest subtitle cue, seconds")
    known_speaker_names: list[str] = Field(
        default_factory=list, max_length=MAX_KNOWN_SPEAKERS,
        description="names of known speakers, one per known_speaker_references[] entry, or without references the "
        "names of speakers enrolled with POST /v1/speakers; diarized speakers that match one are labelled with its "
        "name")
    known_speaker_references: list[str] = Field(
        default_factory=list, max_length=MAX_KNOWN_SPEAKERS,
        description="2-10 s of each known speaker alone, as data URLs (data:audio/wav;base64,...)")
    stream: bool = Field(False, description="answer Server-Sent Events as the text is transcribed (json, text "
                         "and diarized_json; see serve_app/streaming.py)")

    @field_validator("language")
    @classmethod
    def _known_language(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        code = value.strip().lower()
        if code not in whisper_language_codes():
            raise ValueError(f"unknown language code {value!r}; use an ISO 639-1 code such as en, de, fr")
        return code

    @model_validator(mode="after")
    def _consistent(self) -> TranscriptionRequest:
        if self.min_speakers and self.max_speakers and self.min_speakers > self.max_speakers:
            raise ValueError(f"min_speakers ({self.min_speakers}) is greater than max_speakers "
                             f"({self.max_speakers})")
        if self.num_speakers and (
            (self.min_speakers and self.num_speakers < self.min_speakers)
            or (self.max_speakers and self.num_speakers > self.max_speakers)
        ):
            raise ValueError("num_speakers lies outside min_speakers..max_speakers; send one or the other")
        if self.task == "translate" and self.response_format == "diarized_json":
            raise ValueError("diarized_json is for transcriptions; use verbose_json with diarize=true "
                             "for a translation with speakers")
        if self.known_speaker_references and len(self.known_speaker_names) != len(self.known_speaker_references):
            raise ValueError(f"{len(self.known_speaker_names)} known_speaker_names[] but "
                             f"{len(self.known_speaker_references)} known_speaker_references[]: send one name per "
                             "reference, in the same order, or names only for speakers enrolled with "
                             "POST /v1/speakers")
        names = [name.strip() for name in self.known_speaker_names]
        if any(not name or len(name) > 64 for name in names) or len(set(names)) != len(names):
            raise ValueError("known_speaker_names[] must be distinct, non-empty and at most 64 characters each")
        self.known_speaker_names = names
        if self.stream and self.response_format not in _STREAM_FORMATS:
            raise ValueError(f"stream=true answers events for response_format json, text or diarized_json, "
                             f"not {self.response_format}; drop stream or use one of those")
        if self.response_format == "diarized_json" or self.speaker_hints_given or self.known_speaker_names:
            self.diarize = True
        return self

    @property
    def speaker_hints_given(self) -> bool:
        return any(v is not None for v in (self.num_speakers, self.min_speakers, self.max_speakers))

    @property
    def needs_words(self) -> bool:
        """Whether the answer needs word timings (word granularity, subtitles, speakers per word)."""
        if self.diarize or self.response_format in _WORD_FORMATS:
            return True
        return self.response_format == "verbose_json" and "word" in self.timestamp_granularities
