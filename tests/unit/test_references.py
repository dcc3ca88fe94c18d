"""Known speakers' references as OpenAI sends them: base64 data URLs of 2-10 s, decoded like uploads."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from core.errors import BadRequest
from serve_app import references
from tests.speech import to_wav_bytes

LIMITS = {"timeout_s": 60, "memory_limit_mib": 2048}


def data_url(seconds: float, sample_rate: int = 16_000, mime: str = "audio/wav") -> str:
    tone = 0.2 * np.sin(np.arange(int(seconds * sample_rate)) * 2 * np.pi * 220 / sample_rate)
    return f"data:{mime};base64,{base64.b64encode(to_wav_bytes(tone, sample_rate)).decode()}"


async def test_references_decode_to_16_khz_mono_with_their_names_in_order():
    known = await references.decode(["agent", "customer"], [data_url(3), data_url(5.5, 44_100)], **LIMITS)
    assert [r.name for r in known] == ["agent", "customer"]
    assert [round(len(r.audio) / 16_000, 2) for r in known] == [3.0, 5.5]
    assert all(r.audio.dtype == np.float32 and r.audio.ndim == 1 for r in known)


async def test_no_references_is_no_work():
    assert await references.decode([], [], **LIMITS) == ()


@pytest.mark.parametrize(("url", "says"), [
    ("https://example.com/voice.wav", "is not a base64 data URL"),
    ("data:audio/wav,plain-text-not-base64", "is not a base64 data URL"),
    ("data:audio/wav;base64,@@@notbase64@@@", "has invalid base64 data"),
    (f"data:audio/wav;base64,{base64.b64encode(b'not audio at all ' * 40).decode()}", "customer"),
])
async def test_a_reference_that_is_not_audio_is_a_400_naming_it(url, says):
    with pytest.raises(BadRequest, match=says) as info:
        await references.decode(["agent", "customer"], [data_url(3), url], **LIMITS)
    assert info.value.param == "known_speaker_references"
    assert "known_speaker_references[1] (customer)" in info.value.message


@pytest.mark.parametrize("seconds", [1.0, 10.8])
async def test_a_reference_outside_2_to_10_s_is_a_400_that_says_the_bounds(seconds):
    with pytest.raises(BadRequest, match=r"must be 2-10 s of that speaker alone"):
        await references.decode(["agent"], [data_url(seconds)], **LIMITS)


async def test_a_reference_far_too_long_is_refused_as_a_reference_too():
    with pytest.raises(BadRequest, match=r"known_speaker_references\[0\] \(agent\)"):
        await references.decode(["agent"], [data_url(30)], **LIMITS)
