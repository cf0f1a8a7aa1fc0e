"""Reading a sample set stored as many array files ("shards"), chunk by chunk.

Shards: ``.npy`` files (memory-mapped) and ``.npz`` archives (key ``samples``, or a
single array; uncompressed members — what ``np.savez`` and ``memgen generate`` write —
are memory-mapped, compressed ones are loaded one shard at a time). Never unpickled.
Rows convert like :func:`memgen.io.load_samples`: float32, uint8 images → [-1, 1].
A directory means its numbered shards NAME-00000.npz, NAME-00001.npz, … (the merged
NAME.npz that ``memgen generate`` writes beside them is skipped); a glob pattern or a
list of files works too. The global index of a row counts from the first shard's first row.
"""

from __future__ import annotations

import bisect
import functools
import glob
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from memgen.errors import UserError
from memgen.io import SAMPLES_KEY

SHARD_SUFFIXES = (".npy", ".npz")
_SHARD_NAME = re.compile(r"(?P<prefix>.+)-(?P<number>\d+)")


@dataclass(frozen=True)
class Shard:
    """One array file: ``rows`` samples of ``sample_shape`` stored as ``dtype``.

    data_offset: byte offset of the raw array in the file (memory-mappable), or None
    for a compressed npz member, which is read whole.
    """

    path: Path
    rows: int
    sample_shape: tuple[int, ...]
    dtype: str
    fortran_order: bool
    member: str | None  # npz member name; None for .npy
    data_offset: int | None


@dataclass(frozen=True)
class ShardSet:
    """Shards read in order as one set; global row r lives in the shard whose start ≤ r."""

    shards: tuple[Shard, ...]

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.shards[0].sample_shape

    @property
    def starts(self) -> tuple[int, ...]:
        """Global index of each shard's first row."""
        return tuple(np.cumsum([0] + [s.rows for s in self.shards[:-1]]).tolist())


@dataclass(frozen=True)
class Chunk:
    """Rows offset … offset + len(samples) of a shard set: (rows, *sample_shape) float32."""

    offset: int
    samples: torch.Tensor


def find_shards(source: str | Path | Iterable[str | Path]) -> list[Path]:
    """Shard paths from a file, a directory, a glob pattern, or a list (kept in its order).

    Directories and globs are sorted by name, numbers compared as numbers. Temporary
    files (``.name``, ``*.tmp.*``) are skipped.
    """
    if not isinstance(source, (str, Path)):
        paths = [Path(p) for p in source]
        if not paths:
            raise UserError("the list of shard files is empty")
        return paths
    path = Path(source)
    if path.is_dir():
        return _directory_shards(path)
    if path.is_file():
        return [path]
    if any(ch in str(source) for ch in "*?["):
        matches = [Path(p) for p in glob.glob(str(source)) if not _is_temporary(Path(p).name)]
        if not matches:
            raise UserError(f"no shard files match {source}")
        return sorted(matches, key=_natural_key)
    raise UserError(f"no such file, directory or pattern: {source}")


def _directory_shards(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix in SHARD_SUFFIXES
             and not _is_temporary(p.name)]
    numbered = [p for p in files if _SHARD_NAME.fullmatch(p.stem)]
    if numbered:
        prefixes = sorted({_SHARD_NAME.fullmatch(p.stem)["prefix"] for p in numbered})
        others = sorted(p.name for p in files if p not in numbered and p.stem not in prefixes)
        if len(prefixes) > 1 or others:
            names = ", ".join(prefixes + others)
            raise UserError(f"{folder} holds several sets ({names}); pass a pattern such as "
                             f"'{folder / prefixes[0]}-*.npz'")
        files = numbered  # the merged PREFIX.npz beside its shards holds the same rows
    if not files:
        raise UserError(f"{folder} holds no .npy or .npz files")
    return sorted(files, key=_natural_key)


def _is_temporary(name: str) -> bool:
    return name.startswith(".") or ".tmp." in name


def _natural_key(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def open_shards(source: str | Path | Iterable[str | Path] | ShardSet) -> ShardSet:
    """Read the headers of every shard (no data) and check they form one set."""
    if isinstance(source, ShardSet):
        return source
    shards = tuple(_read_shard(p) for p in find_shards(source))
    first = shards[0]
    for shard in shards[1:]:
        if shard.sample_shape != first.sample_shape:
            raise UserError(f"{shard.path.name} holds samples of shape {shard.sample_shape} "
                             f"but {first.path.name} holds {first.sample_shape}")
    if sum(s.rows for s in shards) == 0:
        raise UserError("the shards hold no samples")
    return ShardSet(shards)


def _read_shard(path: Path) -> Shard:
    if path.suffix not in SHARD_SUFFIXES:
        raise UserError(f"{path}: expected a .npy or .npz file")
    if not path.is_file():
        raise UserError(f"no such file {path}")
    try:
        shard = _read_npy_header(path) if path.suffix == ".npy" else _read_npz_header(path)
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, ValueError) as err:
        raise UserError(f"{path}: cannot read ({err})") from None
    return shard


def _read_npy_header(path: Path) -> Shard:
    with path.open("rb") as f:
        shape, fortran, dtype = _array_header(f)
        offset = f.tell()
    shard = _make_shard(path, shape, fortran, dtype, None, offset)
    if path.stat().st_size < offset + _nbytes(shape, dtype):
        raise UserError("the file is shorter than its header says (a torn write?)")
    return shard


def _read_npz_header(path: Path) -> Shard:
    with zipfile.ZipFile(path) as archive:
        info = _pick_member(archive)
        with archive.open(info) as f:
            shape, fortran, dtype = _array_header(f)
            header_len = f.tell()
    if info.file_size < header_len + _nbytes(shape, dtype):
        raise UserError("the archive member is shorter than its header says")
    offset = None
    if info.compress_type == zipfile.ZIP_STORED:
        offset = _member_data_start(path, info) + header_len
    return _make_shard(path, shape, fortran, dtype, info.filename, offset)


def _pick_member(archive: zipfile.ZipFile) -> zipfile.ZipInfo:
    names = [n for n in archive.namelist() if n.endswith(".npy")]
    keys = [n[:-4] for n in names]
    if SAMPLES_KEY in keys:
        return archive.getinfo(f"{SAMPLES_KEY}.npy")
    if len(names) == 1:
        return archive.getinfo(names[0])
    raise UserError(f"no key {SAMPLES_KEY!r} among {keys}, and not exactly one array")


def _member_data_start(path: Path, info: zipfile.ZipInfo) -> int:
    """Byte offset of a stored member's data: after its local header (30 bytes + name + extra)."""
    with path.open("rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
    if len(local) < 30 or local[:4] != b"PK\x03\x04":
        raise UserError("corrupt zip local header")
    name_len = int.from_bytes(local[26:28], "little")
    extra_len = int.from_bytes(local[28:30], "little")
    return info.header_offset + 30 + name_len + extra_len


def _array_header(f):
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    raise UserError(f"unsupported .npy format version {version}")


def _make_shard(path, shape, fortran, dtype, member, offset) -> Shard:
    if dtype.hasobject:
        raise UserError("the array holds Python objects; memgen never unpickles")
    if not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
        raise UserError(f"expected a numeric array, got dtype {dtype}")
    if np.issubdtype(dtype, np.complexfloating):
        raise UserError(f"expected real numbers, got dtype {dtype}")
    if len(shape) < 2:
        raise UserError(f"expected shape (N, D) or (N, C, H, W), got {shape}")
    if np.prod(shape[1:], dtype=np.int64) == 0:
        raise UserError(f"the samples have no features (shape {shape})")
    return Shard(path, int(shape[0]), tuple(int(s) for s in shape[1:]), dtype.str,
                 bool(fortran), member, offset)


def _nbytes(shape, dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def open_array(shard: Shard) -> np.ndarray:
    """The shard's (rows, ...) array: a read-only memory map, or a compressed member loaded."""
    shape = (shard.rows, *shard.sample_shape)
    if shard.data_offset is not None:
        return np.memmap(shard.path, dtype=np.dtype(shard.dtype), mode="r",
                         offset=shard.data_offset, shape=shape,
                         order="F" if shard.fortran_order else "C")
    with np.load(shard.path, allow_pickle=False) as archive:
        return archive[shard.member[:-4]]


def iter_chunks(shards: ShardSet, chunk_rows: int, start: int = 0) -> Iterator[Chunk]:
    """Chunks of at most ``chunk_rows`` rows from global row ``start`` on, across shards.

    Each chunk is a fresh (rows, *sample_shape) float32 tensor; at most one shard's
    array is held open at a time (one whole shard for compressed npz members).
    """
    assert chunk_rows >= 1, chunk_rows  # the callers size chunks from a positive budget
    array_of = functools.lru_cache(maxsize=1)(open_array)
    for r0 in range(start, shards.rows, chunk_rows):
        r1 = min(r0 + chunk_rows, shards.rows)
        yield Chunk(offset=r0, samples=torch.from_numpy(_read_rows(shards, r0, r1, array_of)))


def _read_rows(shards: ShardSet, r0: int, r1: int, array_of) -> np.ndarray:
    """Global rows [r0, r1) as float32, gathered from the shards that hold them."""
    out = np.empty((r1 - r0, *shards.sample_shape), dtype=np.float32)
    starts = shards.starts
    i, row = bisect.bisect_right(starts, r0) - 1, r0
    while row < r1:
        shard, s0 = shards.shards[i], starts[i]
        hi = min(r1, s0 + shard.rows)
        if hi > row:  # empty shards are skipped
            _fill(out[row - r0:hi - r0], array_of(shard)[row - s0:hi - s0], shard)
            row = hi
        i += 1
    return out


def _fill(out: np.ndarray, piece: np.ndarray, shard: Shard) -> None:
    """Convert like :func:`memgen.io.validate_samples`: float32, uint8 images → [-1, 1]."""
    out[...] = piece
    if piece.dtype == np.uint8:
        out /= 127.5
        out -= 1.0
    elif out.size and not (np.isfinite(out.min()) and np.isfinite(out.max())):  # NaN propagates
        raise UserError(f"{shard.path}: contains NaN or Inf")
