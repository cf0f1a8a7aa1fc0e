"""Nested training subsets: S_K = first K entries of one seeded permutation.

Because every K uses the same permutation of range(n_total), the subsets are nested
(S_K ⊂ S_2K), and the held-out set of size n_total - K is the rest of the permutation.

Two permutations (``rule``): "memgen", ``numpy.random.default_rng(seed).permutation``, and
"reference", the paper authors' own: their ``train_utils.split_data(data, K, K, seed)``
(github.com/Lemon-cmd/Diffusion-Models-and-Associative-Memory, called by ``train_unet.py``
with ``args.train.global_seed``, 3407 in their configs) is ``torch.utils.data.random_split(
data, [K, K, N - 2K], generator=torch.Generator().manual_seed(seed))``, whose first part is
``torch.randperm(N, generator=...)[:K]`` (and the whole set when K >= N), so their S_K is
the first K of one torch permutation, nested as memgen's. The permutation is the installed
torch's CPU ``randperm``; their pin is torch 2.0.1 (tests/test_reference_sweep.py checks it
against ``random_split`` itself).
"""

from __future__ import annotations

import numpy as np
import torch

from memgen.data.types import TrainHeldout
from memgen.errors import UserError

DEFAULT_SPLIT_SEED = 3407
CIRCLE_SPLIT_SEED = 42  # the circle pool's subsets (the paper's 2D experiments)
SPLIT_RULES = ("memgen", "reference")


def default_split_seed(name: str) -> int:
    """The split seed of data set ``name`` when none is given: 42 for the circle, else 3407."""
    return CIRCLE_SPLIT_SEED if name == "circle" else DEFAULT_SPLIT_SEED


def _permutation(n_total: int, K: int, seed: int, rule: str = "memgen") -> np.ndarray:
    """The permutation (n_total,) int64 of ``rule`` (module docstring), after checking
    1 <= K <= n_total."""
    if not 1 <= K <= n_total:
        raise UserError(f"K must be in [1, n_total], got K={K} with n_total={n_total}")
    if rule == "reference":
        generator = torch.Generator().manual_seed(seed)
        return torch.randperm(n_total, generator=generator).numpy().astype(np.int64)
    if rule != "memgen":
        raise UserError(f"unknown split rule {rule!r}; known: {', '.join(SPLIT_RULES)}")
    return np.random.default_rng(seed).permutation(n_total).astype(np.int64)


def nested_indices(n_total: int, K: int, seed: int = DEFAULT_SPLIT_SEED,
                   rule: str = "memgen") -> np.ndarray:
    """Indices (K,) int64 of the training subset S_K: the permutation's first K entries."""
    return _permutation(n_total, K, seed, rule)[:K]


def heldout_indices(n_total: int, K: int, seed: int = DEFAULT_SPLIT_SEED,
                    rule: str = "memgen") -> np.ndarray:
    """Indices (n_total - K,) int64 not in S_K, in permutation order."""
    return _permutation(n_total, K, seed, rule)[K:]


def train_heldout(data: np.ndarray, K: int, seed: int = DEFAULT_SPLIT_SEED,
                  rule: str = "memgen") -> TrainHeldout:
    """Split ``data`` (N, ...) into S_K (K, ...) and the held-out rest (N - K, ...)."""
    perm = _permutation(len(data), K, seed, rule)
    return TrainHeldout(data[perm[:K]], data[perm[K:]])
