"""Nested training subsets: S_K = first K entries of one seeded permutation.

Because every K uses the same permutation of range(n_total), the subsets are nested
(S_K ⊂ S_2K), and the held-out set of size n_total - K is the rest of the permutation.
"""

from __future__ import annotations

import numpy as np

from memgen.data.types import TrainHeldout
from memgen.errors import UserError

DEFAULT_SPLIT_SEED = 3407
CIRCLE_SPLIT_SEED = 42  # the circle pool's subsets (the paper's 2D experiments)


def default_split_seed(name: str) -> int:
    """The split seed of data set ``name`` when none is given: 42 for the circle, else 3407."""
    return CIRCLE_SPLIT_SEED if name == "circle" else DEFAULT_SPLIT_SEED


def _permutation(n_total: int, K: int, seed: int) -> np.ndarray:
    """``default_rng(seed).permutation(n_total)`` as int64, after checking 1 <= K <= n_total."""
    if not 1 <= K <= n_total:
        raise UserError(f"K must be in [1, n_total], got K={K} with n_total={n_total}")
    return np.random.default_rng(seed).permutation(n_total).astype(np.int64)


def nested_indices(n_total: int, K: int, seed: int = DEFAULT_SPLIT_SEED) -> np.ndarray:
    """Indices (K,) int64 of the training subset S_K: the permutation's first K entries."""
    return _permutation(n_total, K, seed)[:K]


def heldout_indices(n_total: int, K: int, seed: int = DEFAULT_SPLIT_SEED) -> np.ndarray:
    """Indices (n_total - K,) int64 not in S_K, in permutation order."""
    return _permutation(n_total, K, seed)[K:]


def train_heldout(data: np.ndarray, K: int, seed: int = DEFAULT_SPLIT_SEED) -> TrainHeldout:
    """Split ``data`` (N, ...) into S_K (K, ...) and the held-out rest (N - K, ...)."""
    perm = _permutation(len(data), K, seed)
    return TrainHeldout(data[perm[:K]], data[perm[K:]])
