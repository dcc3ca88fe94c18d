"""Model deployments: each module holds a model holder that works without Ray and a thin Serve class."""

import warnings

# pyannote.audio warns at import that torchcodec cannot load its FFmpeg libraries. We never let pyannote
# or whisperX read files: audio reaches them as in-memory waveforms decoded by PyAV, so the warning
# (a screen of text per replica) says nothing about this service.
warnings.filterwarnings("ignore", message=r"\s*torchcodec is not installed correctly", category=UserWarning)
