"""serve_app.media: the parent side of decoding, its checks, timeouts and how it keeps the child in hand.

What the child makes of uploads is tested in test_decoder.py.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import pytest

from core.errors import InvalidAudio, PayloadTooLarge
from serve_app import media
from serve_app.media import decode_audio, decode_audio_sync
from tests.unit.tone_media import LIMIT_S, assert_says, assert_tone, encode_audio

# ----------------------------------------------------------------------------------------------
# Media that decodes
# ----------------------------------------------------------------------------------------------


def test_sync_variant():
    decoded = decode_audio_sync(encode_audio("wav", "pcm_s16le"), max_duration_s=LIMIT_S)

    assert_tone(decoded, seconds=2.0)


# ----------------------------------------------------------------------------------------------
# Uploads that are refused
# ----------------------------------------------------------------------------------------------


async def test_empty_upload():
    with pytest.raises(InvalidAudio) as error:
        await decode_audio(b"", max_duration_s=LIMIT_S)
    assert_says(error, "the uploaded file is empty")


async def test_upload_over_the_size_limit():
    with pytest.raises(PayloadTooLarge) as error:
        await decode_audio(b"x" * 1001, max_duration_s=LIMIT_S, max_bytes=1000)
    assert_says(error, "1001 bytes", "at most 1000 bytes")


# ----------------------------------------------------------------------------------------------
# The child process
# ----------------------------------------------------------------------------------------------


async def test_a_decoder_that_takes_too_long_is_killed():
    with pytest.raises(InvalidAudio) as error:
        await decode_audio(encode_audio("wav", "pcm_s16le"), max_duration_s=LIMIT_S, timeout_s=0.01)
    assert_says(error, "took longer than 0.01 s", "re-encode it as WAV")


async def test_a_crashing_decoder_gives_a_short_message(monkeypatch):
    crash = "import os, sys; sys.stderr.write('Traceback: /srv/secret.py'); os.kill(os.getpid(), 11)"
    monkeypatch.setattr(media, "_child_command", lambda args: [sys.executable, "-c", crash])
    with pytest.raises(InvalidAudio) as error:
        await decode_audio(b"RIFF....WAVE", max_duration_s=LIMIT_S)
    assert_says(error, "the decoder failed on it", "re-encode it as WAV")
    assert "secret" not in str(error.value)


async def test_cancelling_the_request_kills_the_decoder(monkeypatch):
    started: list[asyncio.subprocess.Process] = []
    real_exec = asyncio.create_subprocess_exec

    async def recording_exec(*args, **kwargs):
        started.append(await real_exec(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(asyncio, "create_subprocess_exec", recording_exec)
    task = asyncio.create_task(decode_audio(encode_audio("wav", "pcm_s16le"), max_duration_s=LIMIT_S))
    while not started:
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert started[0].returncode == -signal.SIGKILL


def test_the_child_inherits_no_secrets(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    assert "HF_TOKEN" not in media._child_env()


def test_memory_limit_below_what_ffmpeg_needs_is_a_programming_error():
    with pytest.raises(ValueError, match="memory_limit_mib"):
        decode_audio_sync(b"x", max_duration_s=LIMIT_S, memory_limit_mib=64)
