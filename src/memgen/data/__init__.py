"""Floor 1 — data sets and their seeded nested splits.

Images are float32 (N, C, H, W) in [-1, 1] (uint8 v -> v / 127.5 - 1);
2D toy sets are float32 (N, 2). :func:`load_dataset` dispatches by name.

May import: floor 0 (``memgen.errors``) and this package.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np

from memgen.data.cifar import RestrictedUnpickler, load_cifar10, read_cifar_batch, safe_unpickle
from memgen.data.digits import load_digits
from memgen.data.folder import load_image_folder
from memgen.data.idx import load_idx_images, parse_idx, read_idx
from memgen.data.paths import DataNotFoundError, candidate_dirs, resolve_root
from memgen.data.splits import (CIRCLE_SPLIT_SEED, DEFAULT_SPLIT_SEED, SPLIT_RULES,
                                default_split_seed, heldout_indices, nested_indices, train_heldout)
from memgen.data.toy import TOY_SETS, circle_pool, gaussian_mixture, load_toy, spiral, two_moons
from memgen.data.transforms import resize_images
from memgen.data.types import LabelledImages, TrainHeldout
from memgen.errors import UserError


def _mnist(split: str, root: str | os.PathLike | None) -> np.ndarray:
    return load_idx_images("mnist", split, root).images


def _fashion_mnist(split: str, root: str | os.PathLike | None) -> np.ndarray:
    return load_idx_images("fashion-mnist", split, root).images


def _cifar10(split: str, root: str | os.PathLike | None) -> np.ndarray:
    return load_cifar10(split, root).images


def _digits(split: str, root: str | os.PathLike | None) -> np.ndarray:
    return load_digits().images  # one set only: split and root are ignored


def _circle(split: str, root: str | os.PathLike | None) -> np.ndarray:
    return circle_pool()  # the fixed 60k pool: split and root are ignored


def _folder(split: str, root: str | os.PathLike | None) -> np.ndarray:
    if root is None:
        raise UserError("the 'folder' data set needs root=<path to an image folder>")
    return load_image_folder(root)


DATASETS: dict[str, Callable[[str, str | os.PathLike | None], np.ndarray]] = {
    "mnist": _mnist,
    "fashion-mnist": _fashion_mnist,
    "fmnist": _fashion_mnist,
    "cifar10": _cifar10,
    "digits": _digits,
    "circle": _circle,
    "folder": _folder,
}


def load_dataset(
    name: str, split: str = "train", root: str | os.PathLike | None = None
) -> np.ndarray:
    """Data set ``name`` as one array: images (N, C, H, W) or toy points (N, 2), float32.

    Names: see :data:`DATASETS`. "digits" and "circle" ignore ``split``;
    "folder" needs ``root`` (64 x 64 images, see :func:`load_image_folder`).
    """
    if name not in DATASETS:
        raise UserError(f"unknown data set {name!r}; known: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](split, root)


__all__ = [
    "CIRCLE_SPLIT_SEED",
    "DATASETS",
    "DEFAULT_SPLIT_SEED",
    "DataNotFoundError",
    "LabelledImages",
    "RestrictedUnpickler",
    "SPLIT_RULES",
    "TOY_SETS",
    "TrainHeldout",
    "candidate_dirs",
    "circle_pool",
    "default_split_seed",
    "gaussian_mixture",
    "heldout_indices",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_idx_images",
    "load_image_folder",
    "load_toy",
    "nested_indices",
    "parse_idx",
    "read_cifar_batch",
    "read_idx",
    "resize_images",
    "resolve_root",
    "safe_unpickle",
    "spiral",
    "train_heldout",
    "two_moons",
]
