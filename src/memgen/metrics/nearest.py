"""The neighbours the detection rules read: d1, d2 in the training set S and s1 in S′.

For each evaluated sample, its k nearest training and synthetic samples by exact kNN
(``memgen.neighbours``) on the feature space's embeddings (``memgen.metrics.features``),
in the metric's units d = ‖φ(x) − φ(y)‖^p.

Duplicated training images. A copy of an image that occurs twice in S has d1 ≈ d2, so
eq. 4 never calls it memorized. memgen flags such rows (the second neighbour is a
near-duplicate of the first: closer to it than ``NEAR_DUPLICATE_DELTA`` × the training
set's median nearest-neighbour distance, the hygiene module's definition) and, with
``distinct=True`` (``--dedup``), measures d2 against the nearest training image that is
*not* a near-duplicate of the first — memgen's extension of eq. 4, which equals it on a
training set without near-duplicates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from memgen.errors import UserError
from memgen.metrics.features import embed_sets
from memgen.neighbours import DEFAULT_MEMORY_BUDGET, ShardSet, get_knn_backend, stream_knn

DEFAULT_K = 5
NEAR_DUPLICATE_DELTA = 0.1  # × the median nearest-neighbour distance (memgen.metrics.hygiene)
DEDUP_EXTRA = 16  # neighbours searched beyond k, so that duplicates can be skipped
_CUT_SAMPLE = 2000  # training samples whose nearest-neighbour distances give the median


@dataclass(frozen=True)
class Neighbours:
    """k nearest training and synthetic neighbours of each evaluated sample, ascending.

    Distances are in the metric's own units (Euclidean for l2, LPIPS for LPIPS).
    """

    train_dist: np.ndarray  # (n, k_train) float64
    train_idx: np.ndarray  # (n, k_train) int64
    synth_dist: np.ndarray  # (n, k_synth) float64
    synth_idx: np.ndarray  # (n, k_synth) int64
    # per row: the nearest two training images are near-duplicates of each other (before
    # any --dedup skipping); None when not checked (fewer than 2 training neighbours)
    duplicate_pair: np.ndarray | None = None
    duplicate_cut: float | None = None  # the near-duplicate distance, metric units
    distinct: bool = False  # train neighbours 2.. skip near-duplicates of the first


def find_neighbours(eval_set, train, synth=None, *, k: int | None = None,
                    metric: str | None = None, memory_budget: int | None = None,
                    progress: bool = False, backend: str = "builtin", state=None,
                    distinct: bool = False) -> Neighbours:
    """Nearest training and synthetic neighbours of every evaluated sample.

    Each set: samples (array or tensor), embedded here with ``metric`` (None: l2), or an
    :class:`~memgen.metrics.features.Embedded` set (embedded once by the caller; metric
    None takes its space). synth=None: the evaluated set is its own synthetic set; each
    sample's own match is excluded by index. synth may be a
    :class:`~memgen.neighbours.ShardSet`: it is then streamed from disk and embedded
    chunk by chunk (restartable through the ``state`` file). k=None takes 5, or fewer when
    a set is smaller; an explicit k must fit both sets. backend: "builtin" or "faiss"
    (exact either way, identical neighbours). distinct=True: the training neighbours after
    the first skip its near-duplicates (module docstring).
    """
    search = get_knn_backend(backend)
    streamed = isinstance(synth, ShardSet)
    (e, t, s), feature_map = embed_sets(metric, eval_set, train, None if streamed else synth)
    e, t = e.vectors, t.vectors
    s = e if synth is None else None if streamed else s.vectors
    n_synth = synth.rows if streamed else len(s) - int(synth is None)
    if n_synth < 1:
        raise UserError("the synthetic set needs at least one sample other than the "
                         "evaluated one (the evaluated set has 1 sample and no --synth)")
    k_train, k_synth = _neighbour_counts(k, len(t), n_synth)
    train_dist, train_idx, pair, cut = _train_neighbours(
        e, t, k_train, search, feature_map.power, memory_budget, progress, distinct)
    if streamed:
        near_s = stream_knn(e, synth, k_synth, feature_map=feature_map, backend=backend,
                            memory_budget=memory_budget, state=state, progress=progress)
    else:
        near_s = search(e, s, k_synth, exclude_self=synth is None, memory_budget=memory_budget,
                        progress=progress)
    power = feature_map.power
    return Neighbours(train_dist=train_dist ** power, train_idx=train_idx,
                      synth_dist=near_s.dist.cpu().numpy() ** power,
                      synth_idx=near_s.idx.cpu().numpy(), duplicate_pair=pair,
                      duplicate_cut=None if cut is None else cut ** power, distinct=distinct)


def _train_neighbours(e: torch.Tensor, t: torch.Tensor, k_train: int, search, power: int,
                      memory_budget, progress: bool, distinct: bool):
    """(dist, idx) of the k_train nearest training rows in embedding units (2.. skipping
    near-duplicates of the first with ``distinct``), the (n,) near-duplicate flag of the
    first two and the near-duplicate cut (both None for k_train = 1)."""
    k_search = min(len(t), k_train + DEDUP_EXTRA) if distinct and k_train > 1 else k_train
    near_t = search(e, t, k_search, memory_budget=memory_budget, progress=progress)
    train_dist, train_idx = near_t.dist.cpu().numpy(), near_t.idx.cpu().numpy()
    pair, cut = None, None
    if k_train > 1:
        cut = _near_duplicate_cut(t, search, memory_budget, power)
        twin = _twin_of_first(t, train_idx if distinct else train_idx[:, :2], cut,
                              memory_budget)
        pair = twin[:, 1]
        if distinct:
            train_dist, train_idx = _skip_twins(train_dist, train_idx, twin, k_train)
    return train_dist, train_idx, pair, cut


def _near_duplicate_cut(t: torch.Tensor, search, memory_budget, power: int) -> float:
    """The near-duplicate distance of ``memgen.metrics.hygiene``: NEAR_DUPLICATE_DELTA × the
    median nearest-other distance of the training set in the metric's units (d = ‖Δφ‖^p;
    on a seeded sample of at most ``_CUT_SAMPLE`` of them), returned in embedding units
    (its p-th root), where the gaps are measured."""
    n = len(t)
    rows = np.arange(n) if n <= _CUT_SAMPLE else np.sort(
        np.random.default_rng(0).choice(n, _CUT_SAMPLE, replace=False))
    near = search(t[torch.from_numpy(rows)], t, 2, memory_budget=memory_budget)
    dist, idx = near.dist.cpu().numpy(), near.idx.cpu().numpy()
    other = np.where(idx[:, 0] == rows, dist[:, 1], dist[:, 0])  # drop the self-match
    return (NEAR_DUPLICATE_DELTA * float(np.median(other ** power))) ** (1 / power)


def _twin_of_first(t: torch.Tensor, idx: np.ndarray, cut: float,
                   memory_budget: int | None = None) -> np.ndarray:
    """(n, k) bool: training neighbour j of a row is a near-duplicate of its first one.

    Rows are taken in blocks whose float64 neighbours and differences fit the budget."""
    twin = np.zeros(idx.shape, dtype=bool)
    per_row = 2 * idx.shape[1] * t[0].numel() * 8  # the (k, D) points and their gaps
    rows_per_step = max(1, (memory_budget or DEFAULT_MEMORY_BUDGET) // per_row)
    for r0 in range(0, len(idx), rows_per_step):
        block = torch.from_numpy(idx[r0:r0 + rows_per_step]).to(t.device)
        points = t[block].double()  # (rows, k, D)
        gap = torch.linalg.vector_norm(points - points[:, :1], dim=-1)
        twin[r0:r0 + len(block)] = (gap <= cut).cpu().numpy()
    twin[:, 0] = False
    return twin


def _skip_twins(dist: np.ndarray, idx: np.ndarray, twin: np.ndarray, k: int):
    """The first neighbour, then the next ones that are not near-duplicates of it: k in
    all, or as many as every row has (at least 2)."""
    keep = ~twin
    k = min(k, int(keep.sum(axis=1).min()))
    if k < 2:
        raise UserError(f"--dedup: a training image has more than {DEDUP_EXTRA} "
                         "near-duplicates (or the training set has no two distinct images); "
                         "remove them first (memgen hygiene duplicates)")
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # kept columns first, in order
    rows = np.arange(len(idx))[:, None]
    return dist[rows, order], idx[rows, order]


def _neighbour_counts(k: int | None, n_train: int, n_synth: int) -> tuple[int, int]:
    if k is None:
        return min(DEFAULT_K, n_train), min(DEFAULT_K, n_synth)
    if k < 1:
        raise UserError(f"k must be at least 1, got {k}")
    if k > n_train:
        raise UserError(f"k={k} is larger than the training set ({n_train} samples)")
    if k > n_synth:
        raise UserError(f"k={k} is larger than the synthetic set ({n_synth} samples "
                         "available)")
    return k, k
