"""The corrupted media corpus (tests/media_files.py) straight through `decode_audio`: every upload decodes to
sound or is refused with one of our 4xx media errors that says why, and the sandboxed decoder never dies
on one (that would be the catch-all "the decoder failed on it"). Also: channel layouts swresample cannot
mix down are mixed to their mean.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from core.errors import AudioTooLong, InvalidAudio, NoAudioStream
from serve_app.media import DecodedAudio, decode_audio
from tests.media_files import CorruptUpload, corrupted_corpus
from tests.unit.tone_media import assert_says

pytestmark = pytest.mark.timeout(300)

# The service's own limits (serve_app.settings.IngressConfig), so the answers are the service's answers.
LIMITS = {"max_duration_s": 4 * 3600, "timeout_s": 60, "memory_limit_mib": 4096}
CASE_BOUND_S = 30
CONCURRENT_DECODES = 2  # one per core of the smallest machine the tests run on
MEDIA_ERRORS = (InvalidAudio, NoAudioStream, AudioTooLong)
PASSWD_LINE = next((line for line in Path("/etc/passwd").read_text().splitlines() if line.startswith("root:")),
                   "root:x:0:0")


async def _outcome(case: CorruptUpload, gate: asyncio.Semaphore) -> tuple[CorruptUpload, object, float]:
    async with gate:
        started = time.monotonic()
        try:
            result: object = await decode_audio(case.data, **LIMITS)
        except Exception as e:  # noqa: BLE001 - which exception came out is what the test looks at
            result = e
        return case, result, time.monotonic() - started


async def test_every_corrupted_upload_decodes_or_is_refused_with_a_media_error():
    corpus = corrupted_corpus()
    gate = asyncio.Semaphore(CONCURRENT_DECODES)
    outcomes = await asyncio.gather(*(_outcome(case, gate) for case in corpus))

    seen: Counter[str] = Counter()
    for case, result, took_s in outcomes:
        assert took_s < CASE_BOUND_S, (case.name, took_s)
        if isinstance(result, DecodedAudio):
            seen["decoded"] += 1
            samples = result.samples
            assert samples.dtype == np.float32 and samples.ndim == 1 and len(samples) > 0, case.name
            assert np.isfinite(samples).all(), case.name
            assert all(PASSWD_LINE not in warning for warning in result.warnings), case.name
            continue
        assert not case.valid, (case.name, result)
        assert type(result) in MEDIA_ERRORS and 400 <= result.status_code < 500, (case.name, repr(result))
        seen[f"{type(result).__name__} {result.status_code}"] += 1
        message = result.message
        assert result.param == "file" and PASSWD_LINE not in message, (case.name, message)
        assert not any(internal in message for internal in ("Traceback", "Errno", "/etc", "/tmp")), message
        assert "the decoder failed on it" not in message, f"the decoder process died on {case.name}"
    print(f"\ncorrupted media decoded directly: {len(corpus)} cases; {dict(sorted(seen.items()))}")


# --- channel layouts without a channel order ------------------------------------------------------


def _wav_of_channels(channels: int, seconds: float = 1.0, *, float32: bool = False) -> bytes:
    """A WAV with the 1 kHz tone at 0.5 in every one of `channels` channels and no channel mask: 16-bit PCM,
    or IEEE float32."""
    import struct

    t = np.arange(round(seconds * 16000)) / 16000
    tone = 0.5 * np.sin(2 * np.pi * 1000 * t)
    samples = tone.astype("<f4") if float32 else np.round(32767 * tone).astype("<i2")
    pcm = np.repeat(samples, channels).tobytes()
    width = samples.itemsize
    fmt = struct.pack("<HHIIHH", 3 if float32 else 1, channels, 16000, 16000 * width * channels, width * channels,
                      8 * width)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(pcm)) + pcm
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


@pytest.mark.parametrize("channels", [9, 32, 64])
async def test_a_layout_swresample_cannot_mix_down_is_mixed_to_the_channels_mean(channels):
    # 9 channels (second-order Ambisonics) or 32 (a mixing desk's multitrack WAV): FFmpeg gives them no
    # channel order, and swresample refuses to downmix those ("not enough information").
    decoded = await decode_audio(_wav_of_channels(channels), max_duration_s=60)

    assert decoded.duration_s == pytest.approx(1.0, abs=0.003) and decoded.warnings == ()
    middle = decoded.samples[4000:12000]
    assert np.sqrt(np.mean(middle**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)


async def test_more_channels_than_can_be_mixed_down_is_refused_with_the_count():
    with pytest.raises(InvalidAudio) as error:
        await decode_audio(_wav_of_channels(65, seconds=0.1), max_duration_s=60)
    assert_says(error, "65 channels", "at most 64", "-ac 1")


async def test_a_non_finite_sample_in_one_of_many_channels_is_silenced_before_the_mix():
    # Silenced first, it costs that one sample; mixed first, NaN would spread to every channel's sum.
    wav = bytearray(_wav_of_channels(9, float32=True))
    at = len(wav) - 4 * 9 * 8000  # channel 0 of the sample half-way through
    wav[at : at + 4] = np.float32("nan").tobytes()
    decoded = await decode_audio(bytes(wav), max_duration_s=60)

    assert decoded.warnings == ("1 samples were not finite numbers and were silenced",)
    assert np.isfinite(decoded.samples).all()
    assert np.sqrt(np.mean(decoded.samples[4000:12000] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)
