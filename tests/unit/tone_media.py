"""Test media for the decoder tests, made with PyAV's bundled FFmpeg, and the checks on what decoding gives.

All media is a 1 kHz sine at amplitude 0.5, so the decoded signal's level (RMS 0.354) and frequency
(1 kHz, which only comes out right at 16 kHz) are known.
"""

from __future__ import annotations

import functools
import io
import struct

import av
import numpy as np
import pytest

from core.errors import ServiceError
from serve_app.media import DecodedAudio

TONE_HZ = 1000.0
AMPLITUDE = 0.5
TONE_RMS = AMPLITUDE / np.sqrt(2)
LIMIT_S = 60.0  # max_duration_s where the test is not about the limit


# ----------------------------------------------------------------------------------------------
# Making test media
# ----------------------------------------------------------------------------------------------


def _tone(seconds: float, rate: int, channels: int) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return np.tile(AMPLITUDE * np.sin(2 * np.pi * TONE_HZ * t), (channels, 1)).astype(np.float32)


def _encode_audio_into(out: av.container.OutputContainer, codec: str, seconds: float, rate: int, layout: str):
    stream = out.add_stream(codec, rate=rate, layout=layout)
    tone = av.AudioFrame.from_ndarray(
        _tone(seconds, rate, stream.codec_context.layout.nb_channels), format="fltp", layout=layout
    )
    tone.sample_rate = rate
    # Encoders want their own sample format and, for most codecs, a fixed frame size.
    fit = av.AudioResampler(
        format=stream.codec_context.codec.audio_formats[0].name,
        layout=layout,
        rate=rate,
        frame_size=stream.codec_context.frame_size or 1024,
    )
    return stream, fit.resample(tone) + fit.resample(None)


@functools.cache
def encode_audio(
    fmt: str, codec: str, *, seconds: float = 2.0, rate: int = 44100, layout: str = "stereo"
) -> bytes:
    """A `seconds`-long tone, every channel the same, as a `fmt` file."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        stream, frames = _encode_audio_into(out, codec, seconds, rate, layout)
        for frame in [*frames, None]:
            out.mux(stream.encode(frame))
    return buf.getvalue()


def _video_codec() -> str:
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


@functools.cache
def encode_video(*, with_audio: bool, seconds: float = 2.0) -> bytes:
    """An MP4 with a small 10 fps video stream and, if asked, an AAC tone."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        video = out.add_stream(_video_codec(), rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        if with_audio:
            audio, audio_frames = _encode_audio_into(out, "aac", seconds, 44100, "mono")
        for i in range(round(seconds * 10)):
            picture = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 10, np.uint8), format="rgb24")
            picture.pts = i
            out.mux(video.encode(picture))
        out.mux(video.encode(None))
        if with_audio:
            for frame in [*audio_frames, None]:
                out.mux(audio.encode(frame))
    return buf.getvalue()


@functools.cache
def mp3_with_cover_art() -> bytes:
    """An MP3 carrying a JPEG cover: FFmpeg shows it as a video stream marked attached_pic."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp3") as out:
        audio, frames = _encode_audio_into(out, "libmp3lame", 1.0, 44100, "mono")
        cover = out.add_stream("mjpeg", rate=1)
        cover.width, cover.height, cover.pix_fmt = 16, 16, "yuvj420p"
        cover.disposition = av.stream.Disposition.attached_pic
        picture = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
        out.mux(cover.encode(picture.reformat(format="yuvj420p")))
        out.mux(cover.encode(None))
        for frame in [*frames, None]:
            out.mux(audio.encode(frame))
    return buf.getvalue()


def flac_declaring(total_samples: int, *, seconds: float) -> bytes:
    """A 16 kHz FLAC of `seconds` whose STREAMINFO claims `total_samples` (0 means "unknown")."""
    data = bytearray(encode_audio("flac", "flac", seconds=seconds, rate=16000, layout="mono"))
    assert data[:4] == b"fLaC"
    # STREAMINFO starts at byte 8; its 36-bit total sample count fills bytes 21 (low 4 bits) to 25.
    data[21] = (data[21] & 0xF0) | (total_samples >> 32)
    data[22:26] = (total_samples & 0xFFFFFFFF).to_bytes(4, "big")
    return bytes(data)


# ----------------------------------------------------------------------------------------------
# Checks on what decoding gives
# ----------------------------------------------------------------------------------------------


def assert_tone(decoded: DecodedAudio, *, seconds: float, tolerance_s: float = 0.003) -> None:
    samples = decoded.samples
    assert samples.dtype == np.float32 and samples.ndim == 1 and samples.flags.writeable
    assert decoded.duration_s == pytest.approx(len(samples) / 16000)
    assert decoded.duration_s == pytest.approx(seconds, abs=tolerance_s)
    middle = samples[len(samples) // 4 : 3 * len(samples) // 4]  # away from codec start-up effects
    assert np.sqrt(np.mean(middle**2)) == pytest.approx(TONE_RMS, rel=0.1)
    assert np.abs(samples).max() < 1.0
    spectrum = np.abs(np.fft.rfft(middle))
    assert np.fft.rfftfreq(len(middle), 1 / 16000)[spectrum.argmax()] == pytest.approx(TONE_HZ, abs=5)


def assert_says(error: pytest.ExceptionInfo[ServiceError], *phrases: str) -> None:
    message = str(error.value)
    for phrase in phrases:
        assert phrase.lower() in message.lower(), message
    # No internals: no traceback, no FFmpeg error text, no path.
    assert not any(internal in message for internal in ("Traceback", "Errno", "/etc", "/tmp")), message


def float_wav(samples: np.ndarray, *, rate: int = 16000) -> bytes:
    """A mono IEEE-float32 WAV of `samples`, written by hand so that NaN and Inf go in unchanged."""
    body = samples.astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)  # format 3: IEEE float
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(body)) + body
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def wav_declaring_unknown_length(wav: bytes) -> bytes:
    """`wav` with its data chunk size set to 0xFFFFFFFF, as streaming writers leave it."""
    data = bytearray(wav)
    at = data.index(b"data")
    data[at + 4 : at + 8] = b"\xff\xff\xff\xff"
    return bytes(data)


@functools.cache
def two_audio_streams(*, first_silent: bool, seconds: float = 2.0) -> bytes:
    """A Matroska file with two 16-bit PCM audio streams: the tone in the second, the first silent or the tone."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as out:
        first, first_frames = _encode_audio_into(out, "pcm_s16le", seconds, 16000, "mono")
        second, second_frames = _encode_audio_into(out, "pcm_s16le", seconds, 16000, "mono")
        if first_silent:
            for frame in first_frames:
                for plane in frame.planes:
                    memoryview(plane)[:] = bytes(plane.buffer_size)
        for stream, frames in ((first, first_frames), (second, second_frames)):
            for frame in [*frames, None]:
                out.mux(stream.encode(frame))
    return buf.getvalue()
