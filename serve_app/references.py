"""Known speakers' voice samples, as OpenAI's `known_speaker_references[]` sends them: data URLs
(`data:audio/wav;base64,...`) of 2-10 s of one speaker, any format `file` accepts.

Each is decoded in the same sandboxed decoder as uploads; a reference that is not a base64 data URL,
does not decode, or is not 2-10 s long is a 400 naming it. A form's text field holds at most
uploads.MAX_FIELD_BYTES (10 s of 48 kHz stereo WAV is 2.6 MB as base64).
"""

from __future__ import annotations

import base64
import binascii
import re

from core.errors import BadRequest, ServiceError
from core.transcript import REFERENCE_MAX_S, REFERENCE_MIN_S, SpeakerReference
from serve_app import media

PARAM = "known_speaker_references"
_DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*?);base64,(?P<payload>.*)", re.DOTALL)


def _payload(index: int, name: str, url: str) -> bytes:
    match = _DATA_URL.fullmatch(url.strip())
    if match is None:
        raise BadRequest(f"{PARAM}[{index}] ({name}) is not a base64 data URL: send data:audio/wav;base64,...",
                         param=PARAM)
    try:
        return base64.b64decode(match["payload"], validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{PARAM}[{index}] ({name}) has invalid base64 data", param=PARAM) from None


async def decode(names: list[str], urls: list[str], *, timeout_s: float,
                 memory_limit_mib: int) -> tuple[SpeakerReference, ...]:
    """The references as 16 kHz mono samples, each with its speaker's name, in the order given."""
    references = []
    for index, (name, url) in enumerate(zip(names, urls, strict=True)):
        data = _payload(index, name, url)
        try:
            decoded = await media.decode_audio(data, max_duration_s=REFERENCE_MAX_S + 1, timeout_s=timeout_s,
                                               memory_limit_mib=memory_limit_mib)
        except ServiceError as e:
            raise BadRequest(f"{PARAM}[{index}] ({name}): {e.message}", param=PARAM) from None
        if not REFERENCE_MIN_S <= decoded.duration_s <= REFERENCE_MAX_S:
            raise BadRequest(f"{PARAM}[{index}] ({name}) is {decoded.duration_s:.1f} s long: each reference must "
                             f"be {REFERENCE_MIN_S:g}-{REFERENCE_MAX_S:g} s of that speaker alone", param=PARAM)
        references.append(SpeakerReference(name=name, audio=decoded.samples))
    return tuple(references)
