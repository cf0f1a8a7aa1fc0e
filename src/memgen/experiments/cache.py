"""The stage cache of a sweep: keys, content fingerprints and done markers.

Every stage writes into ``RUN/cache/<stage>-<key>/``, where the key hashes the config
slice the stage reads and the keys (or content fingerprints) of its inputs, and marks
completion with an atomically written ``DONE.json``; a stage whose folder is done is
skipped. So a killed sweep resumes where it stopped, and changing a setting recomputes
only the stages that read it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import fields
from pathlib import Path

import numpy as np

from memgen.io import atomic_file, write_json

# bump when a stage's output format or key changes: every stage of an earlier version's
# sweep then runs once more (4: each key hashes its stage's whole config slice)
STAGE_VERSION = 4


def stage_key(name: str, *parts) -> str:
    """Hash of a stage's name, its config slice and its inputs' keys."""
    text = json.dumps([name, STAGE_VERSION, *parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def key_fields(base, section, unkeyed: tuple[str, ...] = ()) -> dict:
    """The config slice a stage's key hashes: name → value of every field of dataclass
    ``base`` (``section`` is one, or a sweep section built on it) but ``unkeyed``, the
    fields that cannot change the stage's output (each key names its own and why)."""
    return {f.name: getattr(section, f.name) for f in fields(base) if f.name not in unkeyed}


def fingerprint(array: np.ndarray) -> str:
    """Hash of an array's content (shape, dtype, bytes): a data set's identity in the
    keys, wherever it was read from."""
    digest = hashlib.sha256(f"{array.shape}{array.dtype}".encode())
    digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()[:16]


def file_fingerprint(path: str | Path) -> str:
    """Hash of a file's bytes (sha256, 16 hex digits): a checkpoint's identity in the keys,
    wherever it lies."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def is_done(folder: Path) -> bool:
    """The stage that writes into ``folder`` has finished."""
    return (folder / "DONE.json").exists()


def mark_done(folder: Path, payload: dict) -> None:
    """Write DONE.json atomically: a stage is done exactly when its marker exists."""
    with atomic_file(folder / "DONE.json") as tmp:
        write_json(tmp, payload)
