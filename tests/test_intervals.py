"""Intervals that cover: the exact Clopper–Pearson interval of every fraction, its coverage
computed exactly over a grid of (n, p), and why the multinomial bootstrap was replaced."""

import re
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binom, binomtest

import memgen.metrics
from memgen.metrics.capacity import FractionTable, capacities
from memgen.metrics.stats import clopper_pearson, clopper_pearson_bounds, fractions_from_counts

NS = (20, 200, 1000)
PS = (0.001, 0.02, 0.1, 0.5, 0.9, 0.98, 0.999)


def exact_coverage(lo: np.ndarray, hi: np.ndarray, n: int, p: float) -> float:
    """P(lo[c] ≤ p ≤ hi[c]) for c ~ Binomial(n, p): lo, hi (n + 1,), one per count 0..n.

    Every count is weighted by its probability, so this is the coverage itself, with no
    simulation noise.
    """
    counts = np.arange(n + 1)
    return float(binom.pmf(counts, n, p) @ ((lo <= p) & (p <= hi)))


def old_bootstrap_bounds(n: int, n_resamples: int = 1000, seed: int = 0):
    """(lo, hi), each (n + 1,): the replaced interval for every count 0..n out of n.

    The percentile interval of Multinomial(n, p̂) resamples (one label's marginal is
    Binomial(n, c/n)), numpy's default quantiles, Clopper–Pearson at c = 0 and c = n.
    """
    rng = np.random.default_rng(seed)
    lo, hi = np.empty(n + 1), np.empty(n + 1)
    for c in range(n + 1):
        draws = rng.binomial(n, c / n, size=n_resamples) / n
        lo[c], hi[c] = np.quantile(draws, [0.025, 0.975])
    for c in (0, n):
        lo[c], hi[c] = clopper_pearson(c, n)
    return lo, hi


@pytest.mark.parametrize("n", NS)
def test_clopper_pearson_covers_at_every_n_and_p(n):
    lo, hi = clopper_pearson_bounds(np.arange(n + 1), n)
    coverage = {p: exact_coverage(lo, hi, n, p) for p in PS}
    # The exact interval guarantees ≥ 95% at every p (min over this grid: 0.954).
    assert min(coverage.values()) >= 0.95 - 1e-9, coverage


def test_the_bootstrap_it_replaces_undercovers_near_zero():
    n, p = 200, 0.02
    lo, hi = old_bootstrap_bounds(n)
    assert exact_coverage(lo, hi, n, p) < 0.94  # 0.908: 4 in 100 misses become 9
    lo, hi = clopper_pearson_bounds(np.arange(n + 1), n)
    assert exact_coverage(lo, hi, n, p) >= 0.95  # 0.962


@pytest.mark.parametrize("n", [1, 2, 20, 200, 1000])
def test_equals_scipy_binomtest_exact_interval(n):
    counts = np.unique(np.linspace(0, n, 11).round().astype(int))
    lo, hi = clopper_pearson_bounds(counts, n)
    for c, a, b in zip(counts, lo, hi):
        ref = binomtest(int(c), n).proportion_ci(confidence_level=0.95, method="exact")
        assert (a, b) == pytest.approx((ref.low, ref.high), rel=1e-10, abs=1e-14)
    ref = binomtest(3, 50).proportion_ci(confidence_level=0.8, method="exact")
    assert clopper_pearson(3, 50, level=0.8) == pytest.approx((ref.low, ref.high), rel=1e-10)


def test_every_fraction_gets_its_own_binomial_interval():
    counts = np.array([1, 37, 162])
    est = fractions_from_counts(counts)
    for j, c in enumerate(counts):
        ref = binomtest(int(c), 200).proportion_ci(method="exact")
        assert (est.lo[j], est.hi[j]) == pytest.approx((ref.low, ref.high), rel=1e-10)
    assert est.as_dict()["interval"] == "clopper-pearson"


def test_one_quantile_method_throughout_the_metrics():
    """Every np.quantile / np.percentile under memgen.metrics names its method: the
    bootstrap's QUANTILE_METHOD, or SUMMARY_QUANTILE_METHOD for quartiles of measured
    values."""
    calls = []
    for path in Path(memgen.metrics.__file__).parent.rglob("*.py"):
        text = path.read_text()
        for m in re.finditer(r"np\.(quantile|percentile|nanquantile|nanpercentile)\(", text):
            depth, end = 0, m.end() - 1
            for end in range(m.end() - 1, len(text)):
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                if depth == 0:
                    break
            calls.append((path.name, text[m.start():end + 1]))
    assert calls, "expected the capacity bootstrap's quantile call"
    for name, call in calls:
        assert re.search(r"method=(SUMMARY_)?QUANTILE_METHOD\b", call), (name, call)


def test_capacity_bounds_are_values_of_the_grid():
    # P(memorized) 0.90 on 40 samples at K = 100: MC is 100 or 10 from resample to resample,
    # and its interval bounds stay on the grid (no value between two K).
    K = np.array([10, 100, 1000])
    f = np.array([[0.95, 0.05, 0.0], [0.90, 0.05, 0.05], [0.2, 0.1, 0.7]])
    caps = capacities(FractionTable(K, f, np.full(3, 40)), n_resamples=400)
    assert caps["MC"].value == 100 and 0 < caps["MC"].reached_share <= 1
    assert {caps["MC"].lo, caps["MC"].hi} <= set(K.tolist()) and caps["MC"].lo == 10
    with pytest.raises(ValueError, match="resamples"):
        capacities(FractionTable(K, f, np.full(3, 40)), n_resamples=0)
