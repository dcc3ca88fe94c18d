"""NLTK's punkt_tab sentence-splitter data for whisperX's alignment, provided without `nltk.download`.

whisperX's align() calls nltk.data.load("tokenizers/punkt_tab/<name>.pickle"), which NLTK turns into
PunktTokenizer(<name>) reading four files from <data root>/tokenizers/punkt_tab/<name>/; when they are
missing it calls nltk.download("punkt_tab") (network, which production clusters and CI may not have).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from whisperx.utils import PUNKT_LANGUAGES  # a plain table; whisperx.utils imports nothing heavy

# Empty files are a valid Punkt model
# that splits sentences at every period; that is enough, because align() below puts each segment's
# words back into the caller's segment (deployments/alignment.py) and discards whisperX's sentence boundaries.
PUNKT_FILES = ("abbrev_types.txt", "collocations.tab", "ortho_context.tab", "sent_starters.txt")


def punkt_language(language_code: str) -> str:
    """The punkt_tab model name whisperX asks for when aligning `language_code` ('english' by default)."""
    return PUNKT_LANGUAGES.get(language_code, "english")


def default_nltk_data_dir() -> Path:
    """The NLTK data root used when none is configured: under the user's cache directory."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "transcription-service" / "nltk_data"


def ensure_punkt_tab(language_code: str, data_dir: str | Path | None = None) -> Path:
    """Write a minimal punkt_tab model for `language_code` unless present; put its root on NLTK's path.

    Returns the model's folder. Idempotent and safe to run from several processes at once.
    """
    import nltk

    root = Path(data_dir).expanduser() if data_dir else default_nltk_data_dir()
    folder = root / "tokenizers" / "punkt_tab" / punkt_language(language_code)
    if not all((folder / name).is_file() for name in PUNKT_FILES):
        folder.parent.mkdir(parents=True, exist_ok=True)
        # Written aside and renamed into place: a replica sharing this directory never reads a model
        # with files missing (which would send whisperX to nltk.download).
        staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
        for name in PUNKT_FILES:
            (staging / name).touch()
        staging.chmod(0o755)
        try:
            staging.rename(folder)
        except OSError:  # another process was first, or an incomplete folder is there: complete it
            shutil.rmtree(staging, ignore_errors=True)
            for name in PUNKT_FILES:
                (folder / name).touch()
    if str(root) not in nltk.data.path:
        nltk.data.path.append(str(root))  # appended: a real punkt_tab installed by the user still wins
    return folder
