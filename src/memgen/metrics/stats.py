"""Fractions of the three labels with exact binomial intervals (paper App. B.1).

Each fraction is a count c of one label out of n labelled samples, c ~ Binomial(n, p),
so its 95% interval is the exact Clopper–Pearson one (Clopper & Pearson 1934):
    lo = Beta⁻¹(α/2; c, n − c + 1),  hi = Beta⁻¹(1 − α/2; c + 1, n − c),
with lo = 0 at c = 0 and hi = 1 at c = n. It covers p with probability ≥ 1 − α at every
n and p; the percentile bootstrap it replaces does not (coverage 0.91 at n = 200,
p = 0.02, tests/test_intervals.py). No resampling, so no seed: the interval is a function
of the counts alone. The bootstrap is kept only where no closed form exists (the
capacities, ``metrics.capacity``); every quantile of resampled values uses
QUANTILE_METHOD.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import beta

from memgen.errors import UserError
from memgen.metrics.rules import LABEL_NAMES, label_counts

INTERVAL_METHOD = "clopper-pearson"
# The one quantile definition for np.quantile over resampled values in memgen.metrics:
# the inverse of the empirical CDF (the textbook percentile bootstrap), which always
# returns one of the values drawn, e.g. a K of the grid and never one between two.
QUANTILE_METHOD = "inverted_cdf"
# Quartiles that summarise measured values (σ* per label): numpy's default, linear
# interpolation between order statistics, as these summaries have always been written.
SUMMARY_QUANTILE_METHOD = "linear"


@dataclass(frozen=True)
class FractionEstimate:
    """Observed fractions of memorized, spurious, generalized with exact intervals.

    counts, fractions, lo, hi: (3,) arrays in LABEL_NAMES order; lo, hi: the
    Clopper–Pearson interval at ``level`` of each label's count out of n.
    """

    counts: np.ndarray
    fractions: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    level: float = 0.95

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    def as_dict(self) -> dict:
        return {
            "n_eval": self.n,
            "counts": {name: int(c) for name, c in zip(LABEL_NAMES, self.counts)},
            "fractions": {name: float(f) for name, f in zip(LABEL_NAMES, self.fractions)},
            "ci95": {name: [float(a), float(b)]
                     for name, a, b in zip(LABEL_NAMES, self.lo, self.hi)},
            "interval": INTERVAL_METHOD,
            "level": self.level,
        }


def estimate_fractions(labels: np.ndarray, level: float = 0.95) -> FractionEstimate:
    """Fractions of each label with exact Clopper–Pearson intervals."""
    return fractions_from_counts(label_counts(labels), level)


def fractions_from_counts(counts: np.ndarray, level: float = 0.95) -> FractionEstimate:
    """As :func:`estimate_fractions`, from the (3,) label counts."""
    counts = np.asarray(counts, dtype=np.int64)
    n = int(counts.sum())
    if n == 0:
        raise UserError("cannot estimate fractions of an empty set of labels")
    lo, hi = clopper_pearson_bounds(counts, n, level)
    return FractionEstimate(counts=counts, fractions=counts / n, lo=lo, hi=hi, level=level)


def clopper_pearson_bounds(counts, n, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi): exact binomial intervals for counts successes out of n (broadcast arrays)."""
    if not 0 < level < 1:
        raise UserError(f"the interval level must lie in (0, 1), got {level}")
    counts, n = np.broadcast_arrays(np.asarray(counts, dtype=np.int64),
                                    np.asarray(n, dtype=np.int64))
    if (n < 1).any() or (counts < 0).any() or (counts > n).any():
        raise UserError("counts must lie in [0, n] with n ≥ 1")
    tail = (1 - level) / 2
    # The Beta shapes are clamped to 1 where a bound is fixed (0 or 1) and never used.
    lo = np.where(counts == 0, 0.0, beta.ppf(tail, np.maximum(counts, 1), n - counts + 1))
    hi = np.where(counts == n, 1.0, beta.ppf(1 - tail, counts + 1, np.maximum(n - counts, 1)))
    return lo.astype(np.float64), hi.astype(np.float64)


def clopper_pearson(count: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval for count successes out of n."""
    lo, hi = clopper_pearson_bounds(count, n, level)
    return float(lo), float(hi)


# ------------------------------------------------------------- per-label summaries


def label_confusion(truth: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(3, 3) int64 counts of (truth, labels) pairs: rows the true label code, columns the
    detected one (codes 0–2 of LABEL_NAMES); truth, labels: (n,)."""
    matrix = np.zeros((3, 3), dtype=np.int64)
    np.add.at(matrix, (truth.astype(np.int64), labels.astype(np.int64)), 1)
    return matrix


def label_groups(values: np.ndarray, labels: np.ndarray | None) -> dict[str, np.ndarray]:
    """values (B,) split by label: {"all": values} without labels, else {name: the values
    of that label} for every name of LABEL_NAMES, in that order (labels (B,) codes 0–2)."""
    if labels is None:
        return {"all": values}
    return {name: values[labels == code] for code, name in enumerate(LABEL_NAMES)}


def quartiles_by_label(values: np.ndarray, labels: np.ndarray | None) -> dict[str, dict]:
    """Quartiles of values (B,) per label of ``label_groups``, over the finite values:
    {name: {"n", "finite", "q25", "median", "q75"}}, the quartiles None where a group has
    no finite value. SUMMARY_QUANTILE_METHOD (linear), not QUANTILE_METHOD: these are
    summaries of measured values, not of resampled ones."""
    out = {}
    for name, v in label_groups(values, labels).items():
        finite = v[np.isfinite(v)]
        q = (np.quantile(finite, [0.25, 0.5, 0.75], method=SUMMARY_QUANTILE_METHOD).tolist()
             if len(finite) else [None] * 3)
        out[name] = {"n": int(len(v)), "finite": int(len(finite)), "q25": q[0],
                     "median": q[1], "q75": q[2]}
    return out
