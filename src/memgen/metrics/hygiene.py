"""Training-set hygiene: near-duplicates, and the disjoint-halves test.

Near-duplicates. A training image that occurs twice (or a burst of near-identical
images) makes any generated copy of it look like a blend — its two nearest training images
are at the same distance, so the ratio test d1/d2 ≤ δ_m never fires — while each duplicate
looks memorized relative to the other. The ratio test itself cannot find them (in a group
of three, every member has two close neighbours), so ``near_duplicates`` uses a distance
threshold: pairs closer than δ times the set's median nearest-neighbour distance
(``relative``, scale-free, default δ = 0.1), or closer than δ (``absolute``). Pairs are
searched among each sample's ``k`` nearest others and joined into groups (connected
components), which is what a user removes or merges before a sweep.

Disjoint halves (Kadkhodaie, Guth, Simoncelli & Mallat 2024). Two models trained on
disjoint training sets of the same size K, sampled from the *same* initial noise: when
both memorize, each returns an image of its own set and the two samples differ; when both
generalize, they return nearly the same image. ``compare_halves`` measures, per noise
seed, the distance between the two samples and, for reference, each sample's distance to
its nearest training image of its own half. The test presumes two models of disjoint
sets (``check_halves`` refuses the same set, nested sets and any shared image) and samples
that are images at all: two models that output noise are as "close to each other" as two
that generalize. ``halves_quality`` says which: the precision (``metrics.quality``) of
each model's samples against the *other* half's training set — real images that model
never saw, i.e. held-out data — beside the precision of the model's own training images
against the same reference (real data's precision, the baseline). Samples whose precision
is below QUALITY_SHARE (½) of the baseline are off the data, as for the capacities.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from memgen.errors import UserError
from memgen.io import row_keys
from memgen.metrics.capacity import QUALITY_SHARE
from memgen.metrics.features import get_feature_map
from memgen.metrics.quality import prdc
from memgen.metrics.nearest import DEFAULT_K
from memgen.neighbours import knn_search

THRESHOLDS = ("relative", "absolute")


@dataclass(frozen=True)
class Duplicates:
    """Near-duplicate pairs of a training set (indices into it)."""

    pairs: np.ndarray  # (P, 2) int64, i < j, sorted
    dist: np.ndarray  # (P,) distance of each pair, in the metric's units
    groups: list  # arrays of indices, one per connected group of ≥ 2 samples
    threshold: float  # the distance below which a pair counts
    nn_dist: np.ndarray  # (N,) every sample's nearest-other distance


def near_duplicates(train: np.ndarray, *, threshold: str = "relative", delta: float = 0.1,
                    k: int = 10, metric: str = "l2",
                    memory_budget: int | None = None) -> Duplicates:
    """Pairs of training samples closer than the threshold (see module docstring)."""
    if threshold not in THRESHOLDS:
        raise UserError(f"threshold must be one of {', '.join(THRESHOLDS)}")
    if len(train) < 2:
        raise UserError(f"near-duplicate search needs at least 2 samples, got {len(train)}")
    if not delta > 0:
        raise UserError(f"delta must be positive, got {delta}")
    fmap = get_feature_map(metric)
    emb = fmap.embed_set(train).vectors
    near = knn_search(emb, emb, min(k, len(train) - 1), exclude_self=True,
                      memory_budget=memory_budget)
    d, idx = near.dist.cpu().numpy() ** fmap.power, near.idx.cpu().numpy()  # (N, k)
    cut = delta * float(np.median(d[:, 0])) if threshold == "relative" else delta
    rows, cols = np.nonzero(d <= cut)
    ends = np.sort(np.stack([rows, idx[rows, cols]], axis=1), axis=1)
    pairs, first = np.unique(ends, axis=0, return_index=True)
    n = len(train)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    members = np.unique(pairs)
    groups = [members[component[members] == c] for c in np.unique(component[members])]
    return Duplicates(pairs=pairs.astype(np.int64).reshape(-1, 2),
                      dist=d[rows, cols][first], groups=groups, threshold=cut,
                      nn_dist=d[:, 0])


@dataclass(frozen=True)
class Halves:
    """Per noise seed: the two models' samples compared with each other and with training."""

    between: np.ndarray  # (n,) d(x_a, x_b) for the same initial noise
    nearest_a: np.ndarray  # (n,) d(x_a, nearest training sample of half a)
    nearest_b: np.ndarray  # (n,) d(x_b, nearest training sample of half b)

    def summary(self) -> dict:
        """Medians, and the share of seeds whose two samples are closer to each other than
        either is to its own training set (the generalization signature)."""
        closer = self.between < np.minimum(self.nearest_a, self.nearest_b)
        return {"n": int(len(self.between)),
                "median_between": float(np.median(self.between)),
                "median_nearest_a": float(np.median(self.nearest_a)),
                "median_nearest_b": float(np.median(self.nearest_b)),
                "share_closer_to_each_other": float(closer.mean())}


def compare_halves(samples_a: np.ndarray, samples_b: np.ndarray, train_a: np.ndarray,
                   train_b: np.ndarray, *, metric: str = "l2") -> Halves:
    """Distances between paired samples (row i of each set from the same noise)."""
    if samples_a.shape != samples_b.shape:
        raise UserError(f"the two sample sets differ in shape: {samples_a.shape} vs "
                         f"{samples_b.shape}")
    if train_a.shape[1:] != samples_a.shape[1:] or train_b.shape[1:] != samples_a.shape[1:]:
        raise UserError("training sets and samples must have the same sample shape")
    fmap = get_feature_map(metric)

    def embed(x):
        return fmap.embed_set(x).vectors

    ea, eb = embed(samples_a).double(), embed(samples_b).double()
    between = (ea - eb).norm(dim=1).cpu().numpy() ** fmap.power
    nearest = [knn_search(e, embed(t), 1).dist[:, 0].cpu().numpy() ** fmap.power
               for e, t in ((ea, train_a), (eb, train_b))]
    return Halves(between=between, nearest_a=nearest[0], nearest_b=nearest[1])


def check_halves(train_a: np.ndarray, train_b: np.ndarray) -> None:
    """UserError unless the two training sets are disjoint: the same set, one inside the
    other (nested: memgen train's first K are within its first 2K) or any shared image."""
    rows = [set(row_keys(t)) for t in (train_a, train_b)]
    if train_a.shape[1:] != train_b.shape[1:] or not rows[0] & rows[1]:
        return
    if rows[0] == rows[1]:
        raise UserError(f"the two models were trained on the same training set "
                        f"({len(train_a)} samples): the halves test needs disjoint sets "
                        "(memgen train --half 1 and --half 2)")
    small, large = sorted(((len(r), name) for r, name in zip(rows, "ab")))
    if rows[0] <= rows[1] or rows[1] <= rows[0]:
        raise UserError(f"the training sets are nested: the {small[0]} of model "
                        f"{small[1]} are among the {large[0]} of model {large[1]}; the "
                        "halves test needs disjoint sets (memgen train --half 1 and --half 2)")
    raise UserError(f"the training sets share {len(rows[0] & rows[1])} samples: the halves "
                    "test needs disjoint sets (memgen train --half 1 and --half 2)")


@dataclass(frozen=True)
class HalvesQuality:
    """Precision of each model's samples against the other half's training set (held-out
    for it), and of the model's own training set against the same reference (baseline)."""

    precision_a: float
    precision_b: float
    baseline_a: float
    baseline_b: float
    k: int

    @property
    def off_data(self) -> bool:
        """Either model's samples have less than QUALITY_SHARE of real data's precision."""
        return (self.precision_a < QUALITY_SHARE * self.baseline_a
                or self.precision_b < QUALITY_SHARE * self.baseline_b)

    def as_dict(self) -> dict:
        return {"precision_a": self.precision_a, "precision_b": self.precision_b,
                "baseline_a": self.baseline_a, "baseline_b": self.baseline_b, "k": self.k,
                "off_data": self.off_data,
                "meaning": "precision of each model's samples against the other half's "
                           "training set (real images it never saw), k-NN balls (Kynkäänniemi "
                           "et al. 2019); baseline: the model's own training images against "
                           f"the same reference; off_data: below {QUALITY_SHARE:g} × baseline"}


def halves_quality(samples_a: np.ndarray, samples_b: np.ndarray, train_a: np.ndarray,
                   train_b: np.ndarray, *, metric: str = "l2",
                   k: int = DEFAULT_K) -> HalvesQuality | None:
    """Sample quality of the two models (see module docstring); None when a set is too
    small for k ≥ 1 (k is reduced to fit every set)."""
    k = min(k, len(train_a) - 1, len(train_b) - 1, len(samples_a) - 1)
    if k < 1:
        return None
    fmap = get_feature_map(metric)  # built once, each set embedded once
    ea, eb, ta, tb = (fmap.embed_set(x).vectors for x in (samples_a, samples_b, train_a, train_b))
    return HalvesQuality(precision_a=prdc(tb, ea, k).precision,
                         precision_b=prdc(ta, eb, k).precision,
                         baseline_a=prdc(tb, ta, k).precision,
                         baseline_b=prdc(ta, tb, k).precision, k=k)
