"""Reading sample files and writing output folders atomically.

Sample files (DESIGN §4): ``.npz`` with key ``samples`` — or a single array under any
key, the reference code's layout — or ``.npy``; N×C×H×W or N×D floats, images in
[-1, 1]; uint8 images in [0, 255] are converted. Never unpickled (allow_pickle=False).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np

SAMPLES_KEY = "samples"


def load_samples(path: str | Path, name: str = "samples") -> np.ndarray:
    """Load a sample set as float32 (N, ...) and validate it; ``name`` labels errors."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{name}: no such file {path}")
    try:
        array = _read_array(path)
    except ValueError as err:
        raise ValueError(f"{name}: {path}: {err}") from None
    except (OSError, zipfile.BadZipFile, EOFError, zlib.error) as err:
        raise ValueError(f"{name}: cannot read {path} ({err})") from None
    return validate_samples(array, name)


_MAGIC = {".npy": b"\x93NUMPY", ".npz": b"PK"}


def _read_array(path: Path) -> np.ndarray:
    if path.suffix not in _MAGIC:
        raise ValueError("expected a .npz or .npy file")
    with path.open("rb") as f:
        if not f.read(6).startswith(_MAGIC[path.suffix]):
            raise ValueError(f"not a valid {path.suffix} file")
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    with np.load(path, allow_pickle=False) as archive:
        keys = list(archive.keys())
        if SAMPLES_KEY in keys:
            return archive[SAMPLES_KEY]
        if len(keys) == 1:
            return archive[keys[0]]
        raise ValueError(f"no key {SAMPLES_KEY!r} among {keys}, and more than one array")


def validate_samples(array: np.ndarray, name: str = "samples") -> np.ndarray:
    """float32 copy of a numeric (N, ...) array with N ≥ 1, finite; uint8 → [-1, 1]."""
    array = np.asarray(array)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number)
                                     or array.dtype == bool):
        raise ValueError(f"{name}: expected a numeric array, got dtype {array.dtype}")
    if array.ndim < 2:
        raise ValueError(f"{name}: expected shape (N, D) or (N, C, H, W), got {array.shape}")
    if array.shape[0] == 0:
        raise ValueError(f"{name}: the set is empty")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 127.5 - 1.0
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: contains NaN or Inf")
    return array


def check_same_shape(**sets: np.ndarray | None) -> None:
    """ValueError naming the two sets whose per-sample shapes differ."""
    named = [(n, a) for n, a in sets.items() if a is not None]
    first_name, first = named[0]
    for other_name, other in named[1:]:
        if other.shape[1:] != first.shape[1:]:
            raise ValueError(f"{other_name} samples have shape {other.shape[1:]} but "
                             f"{first_name} samples have shape {first.shape[1:]}")


def check_output_dir(out: str | Path) -> None:
    """ValueError unless ``out`` is absent, empty, or an earlier memgen output folder."""
    out = Path(out)
    if out.exists() and not (out.is_dir() and (not any(out.iterdir())
                                               or (out / ".memgen").exists())):
        raise ValueError(f"{out} exists and was not written by memgen; choose another --out")


@contextmanager
def atomic_output_dir(out: str | Path):
    """Yield a temporary folder that replaces ``out`` only if the block succeeds.

    An existing ``out`` is replaced only if it is empty or was written by memgen
    (holds a ``.memgen`` marker); on failure nothing is left behind.
    """
    out = Path(out)
    check_output_dir(out)
    created = next((p for p in reversed(out.absolute().parents) if not p.exists()), None)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tmp.chmod(0o777 & ~_umask())
        (tmp / ".memgen").touch()
        yield tmp
    except BaseException:
        shutil.rmtree(created or tmp, ignore_errors=True)
        raise
    old = out.with_name(f".{out.name}.old.{os.getpid()}")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_file(path: str | Path):
    """Yield a temporary path (same suffix) that becomes ``path`` if the block succeeds.

    Missing parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2) + "\n")
