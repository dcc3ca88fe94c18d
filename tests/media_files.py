"""Encode test audio into real container files (MP3, MP4 video) with the FFmpeg inside PyAV."""

from __future__ import annotations

import io

import av
import numpy as np

from core.audio import SAMPLE_RATE_HZ as SAMPLE_RATE


def _audio_frames(stream, samples: np.ndarray) -> list[av.AudioFrame]:
    frame = av.AudioFrame.from_ndarray(samples.astype(np.float32)[None, :], format="fltp", layout="mono")
    frame.sample_rate = SAMPLE_RATE
    rate = stream.codec_context.sample_rate
    # Encoders want their own sample format, rate and (for most codecs) a fixed frame size.
    fit = av.AudioResampler(format=stream.codec_context.codec.audio_formats[0].name, layout="mono",
                            rate=rate, frame_size=stream.codec_context.frame_size or 1024)
    return fit.resample(frame) + fit.resample(None)


def encode_audio(samples: np.ndarray, fmt: str = "mp3", codec: str = "libmp3lame", rate: int = 44_100) -> bytes:
    """16 kHz mono float samples as an audio file of container `fmt`."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        for frame in [*_audio_frames(stream, samples), None]:
            out.mux(stream.encode(frame))
    return buf.getvalue()


def encode_video(samples: np.ndarray | None, seconds: float | None = None) -> bytes:
    """An MP4 with a small 10 fps video and, unless `samples` is None, those samples as AAC audio."""
    seconds = seconds if seconds is not None else len(samples) / SAMPLE_RATE
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        video = out.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = out.add_stream("aac", rate=44_100, layout="mono") if samples is not None else None
        for i in range(round(seconds * 10)):
            picture = av.VideoFrame.from_ndarray(np.full((48, 64, 3), (i * 7) % 255, np.uint8), format="rgb24")
            picture.pts = i
            out.mux(video.encode(picture))
        out.mux(video.encode(None))
        if audio is not None:
            for frame in [*_audio_frames(audio, samples), None]:
                out.mux(audio.encode(frame))
    return buf.getvalue()


def silent_flac(seconds: float) -> bytes:
    """`seconds` of 16 kHz silence as FLAC: hours of audio in a few hundred KB (a duration bomb)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="flac") as out:
        stream = out.add_stream("flac", rate=SAMPLE_RATE, layout="mono")
        second = np.zeros((1, SAMPLE_RATE), np.int16)
        for i in range(int(seconds)):
            frame = av.AudioFrame.from_ndarray(second, format="s16", layout="mono")
            frame.sample_rate, frame.pts = SAMPLE_RATE, i * SAMPLE_RATE
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()
