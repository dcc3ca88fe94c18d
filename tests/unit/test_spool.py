"""Job folders on disk: uploads copied in whole or not at all, stage outputs read back, and deletes that
never reach outside the spool."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from serve_app.jobs.spool import UPLOAD, Spool

REFERENCES = ["data:audio/wav;base64,UklGRg==", "https://example.test/bob.wav"]  # as the request sent them


class BreakingUpload(io.BytesIO):
    """An upload whose connection drops after its first bytes: the read after those raises."""

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        if not chunk:
            raise ConnectionResetError("the client went away")
        return chunk


def entries(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_accept_copies_the_upload_and_its_references_into_a_new_folder(tmp_path: Path):
    spool = Spool(tmp_path / "spool")
    data = bytes(range(256)) * 1000
    first = spool.accept(io.BytesIO(data), REFERENCES)
    second = spool.accept(io.BytesIO(b"other"))
    for path in (first, second):
        assert Path(path).name == UPLOAD and Path(path).parent.parent == spool.root
    assert Path(first).parent != Path(second).parent
    assert Path(first).read_bytes() == data and Path(second).read_bytes() == b"other"
    assert spool.read_json(first, "references") == REFERENCES
    assert spool.read_json(second, "references") is None
    folder_a, folder_b = Path(first).parent.name, Path(second).parent.name
    assert entries(spool.root) == sorted([folder_a, f"{folder_a}/{UPLOAD}", f"{folder_a}/references.json",
                                          folder_b, f"{folder_b}/{UPLOAD}"]), "no partial files left behind"


def test_a_copy_that_fails_midway_leaves_no_folder(tmp_path: Path):
    spool = Spool(tmp_path / "spool")
    with pytest.raises(ConnectionResetError):
        spool.accept(BreakingUpload(b"x" * 1000))
    assert entries(spool.root) == []


def test_stage_outputs_read_back_as_kept(tmp_path: Path):
    spool = Spool(tmp_path / "spool")
    upload = spool.accept(io.BytesIO(b"audio"))
    assert spool.read_json(upload, "asr") is None and spool.read_samples(upload) is None
    asr = {"language": "en", "segments": [{"text": " hi", "start_s": 0.0, "end_s": 0.5}]}
    spool.keep_json(upload, "asr", asr)
    spool.keep_json(upload, "asr", {**asr, "language": "fr"})  # a later write replaces the file whole
    assert spool.read_json(upload, "asr") == {**asr, "language": "fr"}
    samples = np.random.default_rng(0).standard_normal(16_000 * 3).astype(np.float32)
    spool.keep_samples(upload, samples)
    back = spool.read_samples(upload)
    assert isinstance(back, np.memmap), "read from disk as needed, not loaded whole"
    assert back.dtype == np.float32 and np.array_equal(back, samples)
    assert sorted(p.name for p in Path(upload).parent.iterdir()) == ["asr.json", "decoded.npy", UPLOAD]


def test_remove_deletes_the_jobs_folder_and_nothing_outside_the_spool(tmp_path: Path):
    spool = Spool(tmp_path / "spool")
    kept, removed = spool.accept(io.BytesIO(b"keep me")), spool.accept(io.BytesIO(b"audio"))
    spool.keep_json(removed, "turns", [])
    spool.remove(removed)
    assert not Path(removed).parent.exists()
    spool.remove(removed)  # already gone: nothing to do
    outside = tmp_path / "elsewhere" / UPLOAD
    outside.parent.mkdir()
    outside.write_bytes(b"not the spool's")
    nested = spool.root / "a" / "b" / UPLOAD
    nested.parent.mkdir(parents=True)
    nested.write_bytes(b"too deep to be a job folder")
    for path in (outside, nested, spool.root / UPLOAD, spool.root / ".." / "elsewhere" / UPLOAD):
        spool.remove(str(path))
    assert outside.read_bytes() == b"not the spool's" and nested.exists()
    assert Path(kept).read_bytes() == b"keep me"
    with pytest.raises(ValueError, match="not in the spool"):
        spool.keep_json(str(outside), "asr", {})


def test_appended_records_read_back_in_order_and_one_cut_short_is_left_out(tmp_path: Path):
    spool = Spool(tmp_path / "spool")
    input = spool.accept(io.BytesIO(b"audio"))
    assert spool.read_json_lines(input, "chunks") == []
    spool.append_json(input, "chunks", {"index": 0, "text": "one"})
    spool.append_json(input, "chunks", {"index": 1, "text": "two"})
    with open(Path(input).parent / "chunks.jsonl", "ab") as log:  # a kill in the middle of a write
        log.write(b'\n{"index": 2, "te')
    spool.append_json(input, "chunks", {"index": 3, "text": "four"})  # the next attempt goes on after it
    assert spool.read_json_lines(input, "chunks") == [
        {"index": 0, "text": "one"}, {"index": 1, "text": "two"}, {"index": 3, "text": "four"}]
