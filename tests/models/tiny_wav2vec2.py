"""A tiny, randomly initialised wav2vec2 CTC model with a character vocabulary, saved to a directory.

No registry package ships a wav2vec2 CTC checkpoint (see /work/shared/MODELS.md), so the alignment
tests build this one instead. `whisperx.load_align_model(lang, device, model_name=DIR)` treats any
name that is not a torchaudio pipeline bundle as a Hugging Face model, so a local directory with
`Wav2Vec2Processor` and `Wav2Vec2ForCTC` files in it goes down the same path as a hub id. whisperX
then takes the tokenizer's vocabulary, lower-cased, as its character dictionary and `<pad>` as the
CTC blank. Its weights are random: alignment timings mean nothing, only their structure does.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch
from transformers import (
    Wav2Vec2Config,
    Wav2Vec2CTCTokenizer,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForCTC,
    Wav2Vec2Processor,
)

from core.audio import SAMPLE_RATE_HZ

# Special tokens first, as in facebook/wav2vec2-base-960h: `<pad>` is the CTC blank, `|` the space.
VOCAB: dict[str, int] = {
    token: index
    for index, token in enumerate(["<pad>", "<s>", "</s>", "<unk>", "|", "'", *string.ascii_lowercase])
}

# 3 conv layers of total stride 5*8*8 = 320 samples: 20 ms frames at 16 kHz like the real models,
# so a few seconds of audio give enough frames for a sentence's characters.
CONV_DIM = (16, 16, 32)
CONV_KERNEL = (10, 8, 8)
CONV_STRIDE = (5, 8, 8)


def build_tiny_wav2vec2(directory: Path | str, seed: int = 0) -> Path:
    """Build the tiny model and its processor into `directory` (created if needed) and return it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    vocab_file = directory / "vocab.json"
    vocab_file.write_text(json.dumps(VOCAB), encoding="utf-8")
    tokenizer = Wav2Vec2CTCTokenizer(
        str(vocab_file), unk_token="<unk>", pad_token="<pad>", word_delimiter_token="|", do_lower_case=True
    )
    feature_extractor = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=SAMPLE_RATE_HZ, padding_value=0.0, do_normalize=True,
        return_attention_mask=False,
    )
    Wav2Vec2Processor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(directory)

    config = Wav2Vec2Config(
        vocab_size=len(VOCAB),
        pad_token_id=VOCAB["<pad>"],
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=CONV_DIM,
        conv_kernel=CONV_KERNEL,
        conv_stride=CONV_STRIDE,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        apply_spec_augment=False,
    )
    # fork_rng: seed the weights without changing the random state of the test session.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Wav2Vec2ForCTC(config)
    model.eval()
    model.save_pretrained(directory)
    return directory
