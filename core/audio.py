"""Facts about audio that the ingress and the models must agree on."""

SAMPLE_RATE_HZ = 16_000
"""Every waveform passed between deployments is mono float32 at this rate (what Whisper, wav2vec2
and pyannote's models are trained on), with times in seconds from its first sample."""
