"""Fractions of the three labels with bootstrap intervals (paper App. B.1).

Resampling n labels with replacement and counting is exactly a draw from
Multinomial(n, p̂), so the bootstrap draws counts directly: the same distribution
as the paper's resampling loop at a fraction of the cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import beta

from memgen.metrics.classify import LABEL_NAMES, label_counts

DEFAULT_RESAMPLES = 1000


@dataclass(frozen=True)
class FractionEstimate:
    """Observed fractions of memorized, spurious, generalized with 95% intervals.

    counts, fractions, lo, hi: (3,) arrays in LABEL_NAMES order. Intervals are bootstrap
    percentile intervals; where a count is 0 or n the bootstrap collapses to a point, and
    the exact Clopper–Pearson interval is reported instead.
    """

    counts: np.ndarray
    fractions: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

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
        }


def bootstrap_counts(counts: np.ndarray, n_resamples: int, rng: np.random.Generator):
    """(n_resamples, 3) label counts of bootstrap resamples of a set with these counts."""
    counts = np.asarray(counts, dtype=np.int64)
    n = int(counts.sum())
    if n == 0:
        raise ValueError("cannot bootstrap an empty set of labels")
    return rng.multinomial(n, counts / n, size=n_resamples)


def estimate_fractions(labels: np.ndarray, n_resamples: int = DEFAULT_RESAMPLES,
                       seed: int = 0, level: float = 0.95) -> FractionEstimate:
    """Fractions of each label with percentile-bootstrap intervals (seeded)."""
    return fractions_from_counts(label_counts(labels), n_resamples, seed, level)


def fractions_from_counts(counts: np.ndarray, n_resamples: int = DEFAULT_RESAMPLES,
                          seed: int = 0, level: float = 0.95) -> FractionEstimate:
    """As :func:`estimate_fractions`, from the (3,) label counts."""
    if n_resamples < 1:
        raise ValueError("the number of bootstrap resamples must be at least 1")
    counts = np.asarray(counts, dtype=np.int64)
    n = int(counts.sum())
    boot = bootstrap_counts(counts, n_resamples, np.random.default_rng(seed)) / n
    tail = (1 - level) / 2
    lo, hi = np.quantile(boot, [tail, 1 - tail], axis=0)
    for j, c in enumerate(counts):
        if c == 0 or c == n:
            lo[j], hi[j] = clopper_pearson(int(c), n, level)
    return FractionEstimate(counts=counts, fractions=counts / n, lo=lo, hi=hi)


def clopper_pearson(count: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval for count successes out of n."""
    tail = (1 - level) / 2
    lo = 0.0 if count == 0 else float(beta.ppf(tail, count, n - count + 1))
    hi = 1.0 if count == n else float(beta.ppf(1 - tail, count + 1, n - count))
    return lo, hi
