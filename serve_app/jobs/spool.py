"""A job's files on disk: its upload, and the outputs of the stages it has finished.

Each job has a folder of its own under the spool root, named before the job exists (the store names the
job): `upload` is the file as received, and each finished stage leaves a file beside it (`decoded.npy`,
`plan.json`, `chunks.jsonl`, `asr.json`, `turns.json`), which an attempt after a restart reads instead of
running the stage again. The store keeps the upload's path as the job's `input`; expiring a job deletes
the whole folder.

Every file is written under a temporary name, flushed to disk and then renamed, so a replica killed
mid-write leaves either the whole file or none. Decoded chunks are appended to one file instead, a record
each, flushed to disk as it is written; one a kill cut short is not read back.

On a cluster the root is a volume every ingress replica mounts (ReadWriteMany): the replica that runs a
job is not always the one that accepted it.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

UPLOAD = "upload"
_COPY_BUFFER = 4 * 1024 * 1024


class Spool:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def accept(self, upload: BinaryIO, references: list[str] | None = None) -> str:
        """Copy an upload (and a request's reference clips, as sent) into a new job folder, durably; the
        path to give the store as the job's input."""
        folder = self.root / uuid.uuid4().hex
        folder.mkdir()
        try:
            with _writing(folder / UPLOAD) as out:
                shutil.copyfileobj(upload, out, _COPY_BUFFER)
            if references:
                self.keep_json(str(folder / UPLOAD), "references", references)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return str(folder / UPLOAD)

    def _folder(self, input: str) -> Path:
        folder = Path(input).parent.resolve()
        if folder.parent != self.root:
            raise ValueError(f"{input!r} is not in the spool at {self.root}")
        return folder

    def keep_json(self, input: str, stage: str, value: Any) -> None:
        with _writing(self._folder(input) / f"{stage}.json") as out:
            out.write(json.dumps(value, separators=(",", ":")).encode())

    def read_json(self, input: str, stage: str) -> Any | None:
        path = self._folder(input) / f"{stage}.json"
        return json.loads(path.read_bytes()) if path.exists() else None

    def append_json(self, input: str, stage: str, value: dict[str, Any]) -> None:
        """Add a record to the stage's `.jsonl` file, durably. Each record is one write, newline first, to a
        file opened for appending: records from several threads never mix, and one a kill cut short stays
        on a line of its own, ahead of the next attempt's."""
        record = b"\n" + json.dumps(value, separators=(",", ":")).encode()
        descriptor = os.open(self._folder(input) / f"{stage}.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(descriptor, record)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def read_json_lines(self, input: str, stage: str) -> list[dict[str, Any]]:
        """The whole records of the stage's `.jsonl` file, in order; one cut short (not a whole JSON object)
        is left out."""
        path = self._folder(input) / f"{stage}.jsonl"
        if not path.exists():
            return []
        records = []
        for line in path.read_bytes().split(b"\n"):
            try:
                record = json.loads(line)
            except ValueError:  # the empty start, or a record a kill cut short
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    def keep_samples(self, input: str, samples: np.ndarray) -> None:
        with _writing(self._folder(input) / "decoded.npy") as out:
            np.save(out, samples, allow_pickle=False)

    def read_samples(self, input: str) -> np.ndarray | None:
        path = self._folder(input) / "decoded.npy"
        # Memory-mapped: a two-hour recording is not read into memory before it is needed.
        return np.load(path, mmap_mode="r", allow_pickle=False) if path.exists() else None

    def remove(self, input: str) -> None:
        """Delete a job's folder (its upload and stage outputs); nothing if it is already gone."""
        try:
            folder = self._folder(input)
        except ValueError:
            return  # not ours: never delete outside the spool
        shutil.rmtree(folder, ignore_errors=True)


class _writing:
    """A file written under a temporary name and renamed into place once flushed to disk."""

    def __init__(self, path: Path) -> None:
        self._path, self._partial = path, path.with_name(f".{path.name}.partial")

    def __enter__(self) -> BinaryIO:
        self._file = self._partial.open("wb")
        return self._file

    def __exit__(self, error_type: type[BaseException] | None, *_: object) -> None:
        try:
            if error_type is None:
                self._file.flush()
                os.fsync(self._file.fileno())
        finally:
            self._file.close()
        if error_type is None:
            os.replace(self._partial, self._path)
            _sync_folder(self._path.parent)
        else:
            self._partial.unlink(missing_ok=True)


def _sync_folder(folder: Path) -> None:
    """Make the folder's new entries durable (a rename is an entry in its folder)."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
