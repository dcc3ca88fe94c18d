"""One decode per speech chunk with CTranslate2's Whisper: the text, and word times from the same tokens.

whisperX's batched pipeline decodes each VAD chunk once, without timestamp tokens, and returns only
text. Word timings must come from that same decode, never from a second recognition pass (a second
pipeline once lost half of a real recording's words at a pause): so this module runs whisperX's decode
itself, keeps the token ids, and hands exactly those tokens to faster-whisper's own word-timestamp
code (`WhisperModel.add_word_timestamps`: CTranslate2's `Whisper.align`, cross-attention DTW, then
punctuation merging and the duration heuristics), against the same encoder output.

The functions take chunks and return one `DecodedChunk` each, so that chunks of several requests can
later be decoded in one batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from core.audio import SAMPLE_RATE_HZ
from core.transcript import Word

# Whisper's fixed input: 30 s windows of 10 ms mel frames.
WINDOW_S = 30
HOP_SAMPLES = 160


@dataclass(frozen=True)
class SpeechChunk:
    """A stretch of audio that VAD found speech in, at most 30 s, in seconds of the request's audio."""

    start_s: float
    end_s: float

    def samples(self, audio: np.ndarray) -> np.ndarray:
        # The same sample arithmetic as whisperX's pipeline (int(), not round()).
        return audio[int(self.start_s * SAMPLE_RATE_HZ):int(self.end_s * SAMPLE_RATE_HZ)]


@dataclass(frozen=True)
class DecodeSettings:
    """How one request's chunks are decoded."""

    task: Literal["transcribe", "translate"] = "transcribe"
    prompt: str | None = None
    beam_size: int = 5
    temperature: float | None = None  # None or 0: beam search; above 0: sampling at that temperature
    batch_size: int = 8
    word_timestamps: bool = False


@dataclass(frozen=True)
class DecodedChunk:
    """What Whisper made of one chunk: its text and tokens, and its words when asked for."""

    chunk: SpeechChunk
    text: str
    tokens: tuple[int, ...]
    avg_logprob: float
    words: tuple[Word, ...] = field(default=())
    # Speech bounds from the words (faster-whisper moves a segment's edges to its first and last
    # word); the chunk's own bounds without words.
    start_s: float = 0.0
    end_s: float = 0.0


def speech_chunks(vad: Any, audio: np.ndarray, *, chunk_size_s: float, onset: float,
                  offset: float) -> list[SpeechChunk]:
    """Voice activity detection once, merged into chunks of at most `chunk_size_s`, as whisperX does."""
    from whisperx.vads import Pyannote, Vad

    if isinstance(vad, Vad):
        waveform, merge = vad.preprocess_audio(audio), vad.merge_chunks
    else:
        waveform, merge = Pyannote.preprocess_audio(audio), Pyannote.merge_chunks
    regions = vad({"waveform": waveform, "sample_rate": SAMPLE_RATE_HZ})
    merged = merge(regions, chunk_size_s, onset=onset, offset=offset)
    return [SpeechChunk(float(m["start"]), float(m["end"])) for m in merged if m["end"] > m["start"]]


def _batches(items: Sequence[SpeechChunk], size: int) -> Iterator[Sequence[SpeechChunk]]:
    for first in range(0, len(items), size):
        yield items[first:first + size]


def _features(pipeline: Any, clips: Sequence[np.ndarray]) -> Any:
    """Log-mel features of each clip padded to 30 s, stacked: whisperX's own preprocessing."""
    import torch

    return torch.stack([pipeline.preprocess({"inputs": clip})["inputs"] for clip in clips])


def _num_frames(clip: np.ndarray) -> int:
    """Mel frames that hold the clip's audio (the rest of the 30 s window is padding)."""
    return min(WINDOW_S * SAMPLE_RATE_HZ // HOP_SAMPLES, max(1, math.ceil(len(clip) / HOP_SAMPLES)))


def detect_language(pipeline: Any, audio: np.ndarray, chunks: Sequence[SpeechChunk]) -> str:
    """The language Whisper hears in the first chunk of speech (not in the first 30 s of the file,
    which may be silence)."""
    if not pipeline.model.model.is_multilingual:
        return "en"
    first = chunks[0].samples(audio) if chunks else audio[:WINDOW_S * SAMPLE_RATE_HZ]
    encoder_output = pipeline.model.encode(_features(pipeline, [first]))
    (token, _probability), *_ = pipeline.model.model.detect_language(encoder_output)[0]
    return str(token[2:-2])  # "<|de|>" -> "de"


def decode(pipeline: Any, audio: np.ndarray, chunks: Sequence[SpeechChunk], language: str,
           settings: DecodeSettings) -> list[DecodedChunk]:
    """Decode each chunk once, `settings.batch_size` at a time; words from the same tokens if asked."""
    from faster_whisper.tokenizer import Tokenizer

    model = pipeline.model  # whisperX's WhisperModel, a faster_whisper.WhisperModel
    tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task=settings.task,
                          language=language)
    # whisperX's prompt: the initial prompt as previous text, then the start sequence, no timestamps.
    previous = tokenizer.encode(" " + settings.prompt.strip()) if settings.prompt else []
    prompt = model.get_prompt(tokenizer, previous, without_timestamps=True)
    decoded: list[DecodedChunk] = []
    last_speech_s = 0.0
    for batch in _batches(chunks, settings.batch_size):
        clips = [chunk.samples(audio) for chunk in batch]
        features = _features(pipeline, clips)
        encoder_output = model.encode(features)
        results = model.model.generate(encoder_output, [prompt] * len(batch), max_length=model.max_length,
                                       return_scores=True, **_search(pipeline.options, settings))
        texts = []
        for chunk, result in zip(batch, results, strict=True):
            tokens = [t for t in result.sequences_ids[0] if t < tokenizer.eot]
            length = len(result.sequences_ids[0])
            # whisperX's figure: the cumulative log-probability over the tokens and the end token.
            avg_logprob = result.scores[0] * length ** pipeline.options.length_penalty / (length + 1)
            text = tokenizer.decode(tokens)
            texts.append(DecodedChunk(chunk, text, tuple(tokens), float(avg_logprob),
                                      start_s=chunk.start_s, end_s=chunk.end_s))
        if settings.word_timestamps:
            texts, last_speech_s = _with_words(pipeline, tokenizer, texts, clips, features, encoder_output,
                                               last_speech_s)
        decoded.extend(texts)
    return decoded


def _search(options: Any, settings: DecodeSettings) -> dict[str, Any]:
    """CTranslate2 search options: the ones whisperX's pipeline was loaded with (its TranscriptionOptions,
    as its own batched decode passes them), with beam search or, when a temperature is asked, sampling."""
    common = {"patience": options.patience, "length_penalty": options.length_penalty,
              "repetition_penalty": options.repetition_penalty,
              "no_repeat_ngram_size": options.no_repeat_ngram_size, "suppress_blank": options.suppress_blank,
              "suppress_tokens": options.suppress_tokens}
    if settings.temperature:
        # CTranslate2 samples only with beam_size 1; top-k 0 samples from the whole distribution.
        return {**common, "beam_size": 1, "sampling_topk": 0, "sampling_temperature": settings.temperature}
    return {**common, "beam_size": settings.beam_size}


def _with_words(pipeline: Any, tokenizer: Any, decoded: list[DecodedChunk], clips: Sequence[np.ndarray],
                features: Any, encoder_output: Any, last_speech_s: float) -> tuple[list[DecodedChunk], float]:
    """Word times for the tokens already decoded, from the encoder output they were decoded from."""
    model = pipeline.model
    spoken = [i for i, item in enumerate(decoded) if item.tokens]
    if not spoken:
        return decoded, last_speech_s
    if len(spoken) < len(decoded):
        # A chunk that decoded to nothing has no words to align (CTranslate2 rejects an empty token
        # list): encode the others alone; rare (a VAD false alarm), so the extra encode is cheap.
        encoder_output = model.encode(features[spoken])
    frames_per_s = model.frames_per_second
    # faster-whisper's structure: one segment per chunk, one sub-segment covering the chunk.
    segments = [[{"tokens": list(decoded[i].tokens), "seek": round(decoded[i].chunk.start_s * frames_per_s),
                  "start": decoded[i].chunk.start_s, "end": decoded[i].chunk.end_s}] for i in spoken]
    last_speech_s = model.add_word_timestamps(
        segments, tokenizer, encoder_output, [_num_frames(clips[i]) for i in spoken],
        # Punctuation merged into the neighbouring word: whisperX's (= faster-whisper's) defaults.
        pipeline.options.prepend_punctuations, pipeline.options.append_punctuations, last_speech_s)
    out = list(decoded)
    for i, (segment,) in zip(spoken, segments, strict=True):
        # faster-whisper places words at seek / frames_per_s, the chunk start rounded to a 10 ms frame:
        # shift them by the rounding so they are exact in the request's audio.
        shift_s = decoded[i].chunk.start_s - segment["seek"] / frames_per_s
        words = tuple(Word(text=w["word"].strip(), start_s=max(0.0, float(w["start"]) + shift_s),
                           end_s=max(0.0, float(w["end"]) + shift_s), probability=float(w["probability"]))
                      for w in segment.get("words", ()) if w["word"].strip())
        item = decoded[i]
        out[i] = DecodedChunk(item.chunk, item.text, item.tokens, item.avg_logprob, words=words,
                              start_s=float(segment["start"]), end_s=float(segment["end"]))
    return out, last_speech_s
