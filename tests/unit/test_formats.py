"""serve_app.formats: dispatch from a format name to a body and its media type."""

from __future__ import annotations

from dataclasses import replace

import pytest

from serve_app.formats import MEDIA_TYPES, RESPONSE_FORMATS, render
from tests.unit.transcripts import two_speakers


@pytest.mark.parametrize("fmt", ["json", "verbose_json", "diarized_json"])
def test_json_bodies_list_decoding_warnings(fmt: str) -> None:
    clean, _ = render(two_speakers(), fmt)
    assert isinstance(clean, dict) and "warnings" not in clean
    damaged = replace(two_speakers(), warnings=("the file is truncated",))
    body, _ = render(damaged, fmt)
    assert isinstance(body, dict) and body["warnings"] == ["the file is truncated"]
    assert {k: v for k, v in body.items() if k != "warnings"} == clean


def test_media_types_and_unknown_format() -> None:
    assert set(MEDIA_TYPES) == set(RESPONSE_FORMATS)
    for fmt in RESPONSE_FORMATS:
        body, media_type = render(two_speakers(), fmt)
        assert media_type == MEDIA_TYPES[fmt]
        assert isinstance(body, dict) == fmt.endswith("json")
    with pytest.raises(ValueError, match="response_format"):
        render(two_speakers(), "docx")
