"""Memorized / spurious / generalized: the detection rules of the paper (eqs. 4–6).

Symbols (paper §2.1, for one evaluated sample x̂):
    d1, d2   distances to its first and second nearest training samples (set S)
    s1       distance to its nearest synthetic sample (set S′, x̂ itself excluded)
    ε        1e-6, guards the divisions

Rules:
    paper     memorized  ⇔ d1 / (d2 + ε) ≤ δ_m                       (eq. 4)
              spurious   ⇔ s1 / (d1 + s1 + ε) ≤ δ_s  and not memorized  (eq. 5)
    absolute  memorized  ⇔ d1 ≤ δ_m;  spurious ⇔ s1 ≤ δ_s and not memorized
              (what the public reference code computes, on raw distances)
    generalized ⇔ neither                                            (eq. 6)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from memgen.metrics.features import get_feature_map

MEMORIZED, SPURIOUS, GENERALIZED = 0, 1, 2
LABEL_NAMES = ("memorized", "spurious", "generalized")
# Default thresholds: the paper's δ_m = 1/3 (Yoon et al. 2023) for both tests, and the
# reference code's README example (LPIPS-AlexNet distances) for the absolute rule.
RULE_DEFAULTS = {"paper": (1 / 3, 1 / 3), "absolute": (0.03, 0.02)}
DEFAULT_K = 5


@dataclass(frozen=True)
class Rule:
    """A detection rule with its thresholds."""

    name: str
    delta_m: float
    delta_s: float
    eps: float = 1e-6

    def __post_init__(self):
        if self.name not in RULE_DEFAULTS:
            raise ValueError(f"unknown rule {self.name!r}; known rules: "
                             f"{', '.join(RULE_DEFAULTS)}")
        for field in ("delta_m", "delta_s", "eps"):
            if not math.isfinite(getattr(self, field)):
                raise ValueError(f"{field} must be a finite number")

    @property
    def needs_second_neighbour(self) -> bool:
        return self.name == "paper"


def make_rule(name: str = "paper", delta_m: float | None = None,
              delta_s: float | None = None, eps: float = 1e-6) -> Rule:
    """A :class:`Rule` with the rule's default thresholds where none is given."""
    if name not in RULE_DEFAULTS:
        raise ValueError(f"unknown rule {name!r}; known rules: {', '.join(RULE_DEFAULTS)}")
    default_m, default_s = RULE_DEFAULTS[name]
    return Rule(name, default_m if delta_m is None else float(delta_m),
                default_s if delta_s is None else float(delta_s), eps)


def memorization_score(train_dist: np.ndarray, rule: Rule) -> np.ndarray:
    """The quantity compared with δ_m: d1/(d2+ε) (paper) or d1 (absolute). train_dist: (n, k)."""
    d = np.asarray(train_dist, dtype=np.float64)
    if rule.name == "absolute":
        return d[:, 0]
    if d.shape[1] < 2:
        raise ValueError("the paper rule needs a second nearest training sample, but the "
                         "training set has only one (use --rule absolute)")
    return d[:, 0] / (d[:, 1] + rule.eps)


def spurious_score(train_dist: np.ndarray, synth_dist: np.ndarray, rule: Rule) -> np.ndarray:
    """The quantity compared with δ_s: s1/(d1+s1+ε) (paper) or s1 (absolute)."""
    d1 = np.asarray(train_dist, dtype=np.float64)[:, 0]
    s1 = np.asarray(synth_dist, dtype=np.float64)[:, 0]
    if rule.name == "absolute":
        return s1
    return s1 / (d1 + s1 + rule.eps)


def apply_rule(train_dist: np.ndarray, synth_dist: np.ndarray, rule: Rule) -> np.ndarray:
    """Labels (n,) int8: 0 memorized, 1 spurious, 2 generalized (eqs. 4–6)."""
    memorized = memorization_score(train_dist, rule) <= rule.delta_m
    spurious = (spurious_score(train_dist, synth_dist, rule) <= rule.delta_s) & ~memorized
    labels = np.full(len(memorized), GENERALIZED, dtype=np.int8)
    labels[spurious] = SPURIOUS
    labels[memorized] = MEMORIZED
    return labels


def label_counts(labels: np.ndarray) -> np.ndarray:
    """(3,) counts of memorized, spurious, generalized."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=3)[:3]


@dataclass(frozen=True)
class Neighbours:
    """k nearest training and synthetic neighbours of each evaluated sample, ascending.

    Distances are in the metric's own units (Euclidean for l2, LPIPS for LPIPS).
    """

    train_dist: np.ndarray  # (n, k_train) float64
    train_idx: np.ndarray  # (n, k_train) int64
    synth_dist: np.ndarray  # (n, k_synth) float64
    synth_idx: np.ndarray  # (n, k_synth) int64


def find_neighbours(eval_set, train, synth=None, *, k: int | None = None, metric: str = "l2",
                    memory_budget: int | None = None, progress: bool = False,
                    backend: str = "builtin", state=None) -> Neighbours:
    """Nearest training and synthetic neighbours of every evaluated sample.

    synth=None: the evaluated set is its own synthetic set; each sample's own match is
    excluded by index. synth may be a :class:`~memgen.metrics.shards.ShardSet`: it is then
    streamed from disk chunk by chunk (restartable through the ``state`` file). k=None
    takes 5, or fewer when a set is smaller; an explicit k must fit both sets. backend:
    "builtin" or "faiss" (exact either way, identical neighbours).
    """
    from memgen.metrics.shards import ShardSet
    from memgen.metrics.stream import get_knn_backend, stream_knn

    search = get_knn_backend(backend)
    feature_map = get_feature_map(metric)
    e, t = feature_map.embed(_tensor(eval_set)), feature_map.embed(_tensor(train))
    streamed = isinstance(synth, ShardSet)
    s = e if synth is None else None if streamed else feature_map.embed(_tensor(synth))
    n_synth = synth.rows if streamed else len(s) - int(synth is None)
    if n_synth < 1:
        raise ValueError("the synthetic set needs at least one sample other than the "
                         "evaluated one (the evaluated set has 1 sample and no --synth)")
    k_train, k_synth = _neighbour_counts(k, len(t), n_synth)
    near_t = search(e, t, k_train, memory_budget=memory_budget, progress=progress)
    if streamed:
        near_s = stream_knn(e, synth, k_synth, feature_map=feature_map, backend=backend,
                            memory_budget=memory_budget, state=state, progress=progress)
    else:
        near_s = search(e, s, k_synth, exclude_self=synth is None, memory_budget=memory_budget,
                        progress=progress)
    power = feature_map.power
    return Neighbours(train_dist=near_t.dist.cpu().numpy() ** power,
                      train_idx=near_t.idx.cpu().numpy(),
                      synth_dist=near_s.dist.cpu().numpy() ** power,
                      synth_idx=near_s.idx.cpu().numpy())


def _neighbour_counts(k: int | None, n_train: int, n_synth: int) -> tuple[int, int]:
    if k is None:
        return min(DEFAULT_K, n_train), min(DEFAULT_K, n_synth)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if k > n_train:
        raise ValueError(f"k={k} is larger than the training set ({n_train} samples)")
    if k > n_synth:
        raise ValueError(f"k={k} is larger than the synthetic set ({n_synth} samples "
                         "available)")
    return k, k


def _tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
