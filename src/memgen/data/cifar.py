"""CIFAR-10 from the standard ``cifar-10-batches-py/`` folder, read without ``pickle.load``.

The batch files are pickles, and ``pickle.load`` on a file can run arbitrary code, so
the project never calls it on data files. The batches only need a tiny part of
pickle: a dict with keys b"data" (uint8 array, 10000 x 3072, each row R, G, B planes
of 32 x 32) and b"labels" (list of ints). :class:`RestrictedUnpickler` resolves only
the few globals that such a file references and refuses every other one with a
ValueError, so a file naming e.g. ``os.system`` is rejected before anything runs:

* ``numpy.core.multiarray._reconstruct`` / ``numpy._core.multiarray._reconstruct``,
  ``numpy.ndarray``, ``numpy.dtype``: how numpy pickles an array;
* ``_codecs.encode``, only with the "latin1" codec: how Python 3 writes ``bytes``
  in protocol 2 (the original files, written by Python 2, do not need it).

The decoded content is then checked (uint8 matrix, one int label per row).
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
from pathlib import Path

import numpy as np

from memgen.data.paths import DataNotFoundError, find_file, resolve_root, uint8_to_unit
from memgen.data.types import LabelledImages
from memgen.errors import UserError

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct

CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_SPLITS: dict[str, tuple[str, ...]] = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` restricted to latin1, the only use a protocol-2 bytes needs."""
    if not isinstance(text, str) or encoding != "latin1":
        raise UserError(f"refused _codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin1")


_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals numpy arrays need (see module docstring)."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UserError(f"refused to load global {module}.{name} from a pickle") from None

    def persistent_load(self, pid):
        raise UserError("refused a pickle persistent id")


def safe_unpickle(raw: bytes, source: str = "<bytes>"):
    """Decode pickle bytes with :class:`RestrictedUnpickler`; any failure is a ValueError."""
    try:
        return RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except ValueError as exc:
        raise UserError(f"{source}: {exc}") from None
    except Exception as exc:  # truncated or malformed pickle stream
        raise UserError(f"{source}: unreadable pickle ({type(exc).__name__}: {exc})") from None


def read_cifar_batch(path: str | os.PathLike) -> LabelledImages:
    """One CIFAR-10 batch file -> images (N, 3, 32, 32) float32 in [-1, 1], labels int64."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"CIFAR batch not found: {path}")
    batch = safe_unpickle(path.read_bytes(), source=str(path))
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise UserError(f"{path}: not a CIFAR batch (need a dict with b'data' and b'labels')")
    data, labels = batch[b"data"], batch[b"labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * 32 * 32:
        raise UserError(f"{path}: b'data' must be a uint8 array (N, 3072)")
    if not isinstance(labels, list) or len(labels) != data.shape[0] \
            or not all(isinstance(v, int) for v in labels):
        raise UserError(f"{path}: b'labels' must be a list of {data.shape[0]} ints")
    images = uint8_to_unit(data.reshape(-1, 3, 32, 32))
    return LabelledImages(images, np.asarray(labels, dtype=np.int64))


def load_cifar10(split: str = "train", root: str | os.PathLike | None = None) -> LabelledImages:
    """CIFAR-10 images (N, 3, 32, 32) float32 in [-1, 1] and labels (N,) int64.

    Batches are read from ``<root>/cifar-10-batches-py/`` or ``<root>/`` itself, with
    the root found by :func:`memgen.data.paths.resolve_root`.

    ``split`` is "train" (data_batch_1..5, N = 50000) or "test" (test_batch, N = 10000).
    """
    if split not in CIFAR_SPLITS:
        raise UserError(f"split must be 'train' or 'test', got {split!r}")
    names = CIFAR_SPLITS[split]
    folder = resolve_root(
        "cifar10", root, required=names[0], subfolder=CIFAR_FOLDER, allow_gz=False
    )
    batches = [
        read_cifar_batch(find_file("cifar10", folder, name, allow_gz=False))
        for name in names
    ]
    images = np.concatenate([b.images for b in batches])
    labels = np.concatenate([b.labels for b in batches])
    return LabelledImages(images, labels)
