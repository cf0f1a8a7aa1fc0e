"""Named results of the data loaders (tuples, so ``x, y = load(...)`` still works)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class LabelledImages(NamedTuple):
    """Images (N, C, H, W) float32 in [-1, 1] and their labels (N,) int64."""

    images: np.ndarray
    labels: np.ndarray


class TrainHeldout(NamedTuple):
    """The first K items of a seeded permutation (train) and the rest (heldout)."""

    train: np.ndarray
    heldout: np.ndarray
