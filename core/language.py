"""Language codes: the ones Whisper knows, and the scripts written without spaces between words."""

from __future__ import annotations

import functools

LANGUAGES_WITHOUT_SPACES = frozenset({"ja", "zh", "yue"})
"""Words in these scripts are not separated by spaces: text is joined without them, and a word
timing covers one character (as whisperX's alignment and subtitle code treat them)."""


@functools.cache
def whisper_language_codes() -> frozenset[str]:
    """The ISO 639-1 codes (and yue) that Whisper's tokenizer accepts as a language."""
    from faster_whisper.tokenizer import _LANGUAGE_CODES  # a plain tuple; faster-whisper exports no public one

    return frozenset(_LANGUAGE_CODES)


def joins_without_spaces(language: str | None) -> bool:
    return language is not None and language.strip().lower() in LANGUAGES_WITHOUT_SPACES
