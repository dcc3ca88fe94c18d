"""One decode per speech chunk with CTranslate2's Whisper: the text, and word times from the same tokens.

whisperX's batched pipeline decodes each VAD chunk once, without timestamp tokens, and returns only
text. Word timings must come from that same decode, never from a second recognition pass (a second
pipeline once lost half of a real recording's words at a pause): so this module runs whisperX's decode
itself, keeps the token ids, and hands exactly those tokens to faster-whisper's own word-timestamp
code (`WhisperModel.add_word_timestamps`: CTranslate2's `Whisper.align`, cross-attention DTW, then
punctuation merging and the duration heuristics), against the same encoder output.

`decode` takes `ChunkTask`s, which may come from many requests with different languages, tasks and
prompts (CTranslate2 takes a prompt per batch item, if all are as long), and returns one `DecodedChunk`
each. Every chunk is padded to Whisper's 30 s window, so a batch costs the same per chunk whatever its
company, and on the real test recordings no chunk's tokens or word times changed with its company
(benchmarks/batch_equality.py).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from core.audio import SAMPLE_RATE_HZ
from core.chunks import ChunkTask, DecodedChunk, SpeechChunk
from core.transcript import Word

# Whisper's fixed input: 30 s windows of 10 ms mel frames.
WINDOW_S = 30
HOP_SAMPLES = 160


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


def decode(pipeline: Any, tasks: Sequence[ChunkTask], *, beam_size: int = 5,
           batch_size: int = 8) -> list[DecodedChunk]:
    """Decode each chunk once, up to `batch_size` at a time; words from the same tokens where asked.
    Results come back in the order of `tasks`."""
    tokenizers: dict[tuple[str, str], Any] = {
        key: _tokenizer(pipeline, *key) for key in {(t.language, t.task) for t in tasks}}
    prompts = [_prompt(pipeline, tokenizers[task.language, task.task], task) for task in tasks]
    # CTranslate2 wants the start-of-transcript token at the same position in every item of a batch:
    # chunks share a batch when their search is the same and their prompts are as long.
    groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for i, (task, prompt) in enumerate(zip(tasks, prompts, strict=True)):
        groups[task.search_key, len(prompt)].append(i)
    decoded: dict[int, DecodedChunk] = {}
    for rows in groups.values():
        for first in range(0, len(rows), batch_size):
            batch = rows[first:first + batch_size]
            items = _decode_batch(pipeline, tokenizers, [tasks[i] for i in batch], [prompts[i] for i in batch],
                                  beam_size)
            decoded.update(zip(batch, items, strict=True))
    return [decoded[i] for i in range(len(tasks))]


def _tokenizer(pipeline: Any, language: str, task: str) -> Any:
    from faster_whisper.tokenizer import Tokenizer

    model = pipeline.model  # whisperX's WhisperModel, a faster_whisper.WhisperModel
    return Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task=task, language=language)


def _prompt(pipeline: Any, tokenizer: Any, task: ChunkTask) -> list[int]:
    """whisperX's prompt: the initial prompt as previous text, then the start sequence of the chunk's
    language and task, no timestamps."""
    previous = tokenizer.encode(" " + task.prompt.strip()) if task.prompt else []
    prompt: list[int] = pipeline.model.get_prompt(tokenizer, previous, without_timestamps=True)
    return prompt


def writeable(audio: np.ndarray) -> np.ndarray:
    """float32 audio torch can take: arrays from Ray's object store are read-only views, so those are copied."""
    audio = np.asarray(audio, dtype=np.float32)
    return audio if audio.flags.writeable else audio.copy()


def _decode_batch(pipeline: Any, tokenizers: dict[tuple[str, str], Any], batch: Sequence[ChunkTask],
                  prompts: list[list[int]], beam_size: int) -> list[DecodedChunk]:
    model = pipeline.model
    clips = [writeable(task.audio) for task in batch]
    features = _features(pipeline, clips)
    encoder_output = model.encode(features)
    results = model.model.generate(encoder_output, prompts, max_length=model.max_length, return_scores=True,
                                   **_search(pipeline.options, beam_size, batch[0].temperature))
    decoded = []
    for task, result in zip(batch, results, strict=True):
        tokenizer = tokenizers[task.language, task.task]
        tokens = [t for t in result.sequences_ids[0] if t < tokenizer.eot]
        length = len(result.sequences_ids[0])
        # whisperX's figure: the cumulative log-probability over the tokens and the end token.
        avg_logprob = result.scores[0] * length ** pipeline.options.length_penalty / (length + 1)
        decoded.append(DecodedChunk(task.chunk, tokenizer.decode(tokens), tuple(tokens), float(avg_logprob),
                                    start_s=task.chunk.start_s, end_s=task.chunk.end_s))
    # CTranslate2 aligns a batch under one start sequence: one alignment per language and task.
    wanted: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, task in enumerate(batch):
        if task.word_timestamps and decoded[i].tokens:  # no words to align in a chunk decoded to nothing
            wanted[task.language, task.task].append(i)
    for key, rows in wanted.items():
        # The encoder output of those rows: encoded again only when the batch mixes languages or holds
        # empty chunks (rare: a VAD false alarm), since a batch's output cannot be sliced on every device.
        rows_output = encoder_output if len(rows) == len(batch) else model.encode(features[rows])
        for i, item in zip(rows, _with_words(pipeline, tokenizers[key], [batch[i] for i in rows],
                                             [decoded[i] for i in rows], rows_output), strict=True):
            decoded[i] = item
    return decoded


def _search(options: Any, beam_size: int, temperature: float | None) -> dict[str, Any]:
    """CTranslate2 search options: the ones whisperX's pipeline was loaded with (its TranscriptionOptions,
    as its own batched decode passes them), with beam search or, when a temperature is asked, sampling."""
    common = {"patience": options.patience, "length_penalty": options.length_penalty,
              "repetition_penalty": options.repetition_penalty,
              "no_repeat_ngram_size": options.no_repeat_ngram_size, "suppress_blank": options.suppress_blank,
              "suppress_tokens": options.suppress_tokens}
    if temperature:
        # CTranslate2 samples only with beam_size 1; top-k 0 samples from the whole distribution.
        return {**common, "beam_size": 1, "sampling_topk": 0, "sampling_temperature": temperature}
    return {**common, "beam_size": beam_size}


class _AlignedModel:
    """faster-whisper's `WhisperModel` as `add_word_timestamps` sees it, with one chunk's alignment
    already computed (in a batch with the others): its word-time heuristics then run on each chunk
    alone, against that chunk's own previous speech, so no chunk depends on another's decode."""

    def __init__(self, model: Any, alignment: list[dict[str, Any]]) -> None:
        self.frames_per_second = model.frames_per_second
        self._alignment = alignment

    def find_alignment(self, *_args: Any, **_kwargs: Any) -> list[list[dict[str, Any]]]:
        return [self._alignment]


def _with_words(pipeline: Any, tokenizer: Any, batch: Sequence[ChunkTask], decoded: Sequence[DecodedChunk],
                encoder_output: Any) -> list[DecodedChunk]:
    """Word times for the tokens already decoded, from the encoder output they were decoded from."""
    from faster_whisper.transcribe import WhisperModel

    model = pipeline.model
    frames_per_s = model.frames_per_second
    num_frames = [_num_frames(task.audio) for task in batch]
    alignments = model.find_alignment(tokenizer, [list(item.tokens) for item in decoded], encoder_output,
                                      num_frames)
    out = []
    for task, item, alignment, frames in zip(batch, decoded, alignments, num_frames, strict=True):
        # faster-whisper's structure: one segment per chunk, one sub-segment covering the chunk.
        seek = round(task.chunk.start_s * frames_per_s)
        segment = {"tokens": list(item.tokens), "seek": seek, "start": task.chunk.start_s, "end": task.chunk.end_s}
        WhisperModel.add_word_timestamps(
            _AlignedModel(model, alignment), [[segment]], tokenizer, encoder_output, [frames],  # type: ignore[arg-type]
            # Punctuation merged into the neighbouring word: whisperX's (= faster-whisper's) defaults.
            pipeline.options.prepend_punctuations, pipeline.options.append_punctuations, task.previous_end_s)
        # faster-whisper places words at seek / frames_per_s, the chunk start rounded to a 10 ms frame:
        # shift them by the rounding so they are exact in the request's audio.
        shift_s = task.chunk.start_s - seek / frames_per_s
        words = tuple(Word(text=w["word"].strip(), start_s=max(0.0, float(w["start"]) + shift_s),
                           end_s=max(0.0, float(w["end"]) + shift_s), probability=float(w["probability"]))
                      for w in segment.get("words", ()) if w["word"].strip())
        out.append(DecodedChunk(item.chunk, item.text, item.tokens, item.avg_logprob, words=words,
                                start_s=float(segment["start"]), end_s=float(segment["end"])))
    return out
