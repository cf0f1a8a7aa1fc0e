"""IDX files (the MNIST / Fashion-MNIST format) and the loaders built on them.

IDX layout (all integers big-endian)::

    bytes 0-1   zero
    byte  2     type code: 0x08 uint8, 0x09 int8, 0x0B int16,
                           0x0C int32, 0x0D float32, 0x0E float64
    byte  3     ndim
    then        ndim int32 sizes, then the data in C order.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from memgen.data.paths import DataNotFoundError, find_file, resolve_root, uint8_to_unit
from memgen.data.types import LabelledImages
from memgen.errors import UserError

IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

IDX_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

IDX_DATASETS = ("mnist", "fashion-mnist")


def _read_bytes(path: Path) -> bytes:
    """Whole file contents, gunzipped when the name ends in .gz."""
    if not path.is_file():
        raise DataNotFoundError(f"IDX file not found: {path}")
    if path.suffix == ".gz":
        try:
            with gzip.open(path, "rb") as f:
                return f.read()
        except (OSError, EOFError) as exc:
            raise UserError(f"{path}: corrupt gzip stream ({exc})") from None
    return path.read_bytes()


def parse_idx(raw: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode IDX bytes into an array with the stored shape and native byte order."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise UserError(f"{source}: not an IDX file (bad magic number)")
    code, ndim = raw[2], raw[3]
    if code not in IDX_TYPES:
        raise UserError(f"{source}: unknown IDX type code 0x{code:02X}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"{source}: IDX header truncated ({len(raw)} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    dtype = IDX_TYPES[code]
    expected = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
    if len(raw) - header != expected:
        raise UserError(
            f"{source}: IDX data has {len(raw) - header} bytes, shape {shape} needs {expected}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))  # native order, writable copy


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (plain or .gz) into a numpy array of its stored shape and type."""
    path = Path(path)
    return parse_idx(_read_bytes(path), source=str(path))


def load_idx_images(
    name: str, split: str = "train", root: str | os.PathLike | None = None
) -> LabelledImages:
    """MNIST-style images (N, 1, 28, 28) float32 in [-1, 1] and labels (N,) int64.

    ``name`` is "mnist" or "fashion-mnist"; ``split`` is "train" or "test".
    The folder is found by :func:`memgen.data.paths.resolve_root`.
    """
    if name not in IDX_DATASETS:
        raise UserError(f"unknown IDX data set {name!r}; known: {', '.join(IDX_DATASETS)}")
    if split not in IDX_FILES:
        raise UserError(f"split must be 'train' or 'test', got {split!r}")
    image_file, label_file = IDX_FILES[split]
    folder = resolve_root(name, root, required=image_file)
    images = read_idx(find_file(name, folder, image_file))
    labels = read_idx(find_file(name, folder, label_file))
    if images.dtype != np.uint8 or images.ndim != 3:
        raise UserError(
            f"{name}: expected uint8 images (N, H, W), got {images.dtype} {images.shape}"
        )
    if labels.shape != (images.shape[0],):
        raise UserError(f"{name}: {labels.shape[0]} labels for {images.shape[0]} images")
    return LabelledImages(uint8_to_unit(images[:, None]), labels.astype(np.int64))
