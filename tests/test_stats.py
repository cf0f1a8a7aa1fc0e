"""Exact intervals of the label fractions, and the capacities MC, SC, GC (eqs. 1–3)."""

import numpy as np
import pytest

from memgen.metrics.capacity import FractionTable, capacities, capacity_values, read_fraction_table
from memgen.metrics.stats import clopper_pearson, estimate_fractions, fractions_from_counts


def test_intervals_cover_the_truth_at_the_nominal_rate():
    truth = np.array([0.2, 0.3, 0.5])
    rng = np.random.default_rng(123)
    trials, covered = 400, np.zeros(3)
    for _ in range(trials):
        est = estimate_fractions(rng.choice(3, size=400, p=truth))
        covered += (est.lo <= truth) & (truth <= est.hi)
    coverage = covered / trials
    # 95% nominal, exact intervals cover at least that; binomial standard error ≈ 0.011.
    assert ((coverage > 0.92) & (coverage < 0.995)).all(), coverage


def test_interval_width_matches_the_binomial_standard_error():
    counts = np.array([300, 200, 500])
    est = fractions_from_counts(counts)
    p = counts / 1000
    half_width = (est.hi - est.lo) / 2
    np.testing.assert_allclose(half_width, 1.96 * np.sqrt(p * (1 - p) / 1000), rtol=0.03)


def test_estimate_is_a_function_of_the_counts():
    labels = np.array([0, 1, 2, 2, 1, 0, 2, 2])
    a, b = estimate_fractions(labels), fractions_from_counts(np.array([2, 2, 4]))
    np.testing.assert_array_equal(a.lo, b.lo)
    np.testing.assert_array_equal(a.hi, b.hi)
    np.testing.assert_array_equal(a.counts, [2, 2, 4])
    d = a.as_dict()
    assert d["interval"] == "clopper-pearson" and d["level"] == 0.95
    assert d["ci95"]["generalized"] == [float(a.lo[2]), float(a.hi[2])]


def test_degenerate_counts_use_the_exact_interval():
    est = fractions_from_counts(np.array([0, 0, 100]))
    # Clopper–Pearson upper bound for 0/100: 1 − 0.025^(1/100)
    assert est.hi[0] == pytest.approx(1 - 0.025 ** (1 / 100))
    assert est.lo[0] == 0.0
    assert est.lo[2] == pytest.approx(0.025 ** (1 / 100))
    assert est.hi[2] == 1.0
    assert clopper_pearson(5, 10)[0] < 0.5 < clopper_pearson(5, 10)[1]


def test_bad_counts():
    with pytest.raises(ValueError, match="empty"):
        fractions_from_counts(np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match="level"):
        fractions_from_counts(np.array([1, 2, 3]), level=1.0)
    with pytest.raises(ValueError, match=r"\[0, n\]"):
        clopper_pearson(11, 10)


def _table(fractions, n_eval=None):
    K = np.array([2, 10, 100, 1000, 10000])
    return FractionTable(K, np.array(fractions, dtype=float), n_eval)


FRACTIONS = [[1.00, 0.00, 0.00],
             [0.95, 0.04, 0.01],
             [0.60, 0.30, 0.10],
             [0.10, 0.40, 0.50],
             [0.00, 0.05, 0.95]]


def test_capacities_on_a_hand_made_table():
    assert capacity_values(_table(FRACTIONS).K, _table(FRACTIONS).fractions) == (10, 1000, 10000)
    # ε = 0.5: MC = largest K with P(mem) ≥ 0.5 → 100; GC = smallest K with P(gen) ≥ 0.5 → 1000
    assert capacity_values(_table(FRACTIONS).K, _table(FRACTIONS).fractions, 0.5) == (100, 1000,
                                                                                      1000)


def test_capacity_exactly_at_the_margin_counts():
    table = _table([[0.9, 0.1, 0.0], [0.5, 0.5, 0.0], [0.0, 0.3, 0.7], [0, 0.2, 0.8],
                    [0, 0.1, 0.9]])
    assert capacity_values(table.K, table.fractions, 0.1) == (2, 10, 10000)


def test_capacities_not_reached():
    table = _table([[0.8, 0.1, 0.1], [0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.3, 0.3, 0.4],
                    [0.1, 0.3, 0.6]])
    caps = capacities(table)
    assert caps["MC"].value is None and caps["GC"].value is None
    assert caps["SC"].value == 100  # ties: the smallest K


def test_capacity_intervals_from_bootstrap():
    caps = capacities(_table(FRACTIONS, np.full(5, 10_000)), n_resamples=300)
    assert (caps["MC"].lo, caps["MC"].hi) == (10, 10)  # 0.95 ± 0.004 stays above 0.9
    assert caps["GC"].value == 10000 and caps["GC"].reached_share == 1.0
    small = capacities(_table([[0.91, 0.05, 0.04]] * 2 + FRACTIONS[2:], np.full(5, 30)),
                       n_resamples=300)
    assert small["MC"].reached_share < 1.0  # 0.91 on 30 samples often falls below 0.9


def test_read_fraction_table(tmp_path):
    path = tmp_path / "fractions.csv"
    path.write_text("K,memorized,spurious,generalized,n_eval\n"
                    "100,0.6,0.3,0.1,1000\n2,1.0,0.0,0.0,1000\n")
    table = read_fraction_table(path)
    np.testing.assert_array_equal(table.K, [2, 100])  # sorted by K
    np.testing.assert_array_equal(table.n_eval, [1000, 1000])
    path.write_text("K,memorized,generalized\n2,1,0\n")
    with pytest.raises(ValueError, match="spurious"):
        read_fraction_table(path)
    path.write_text("K,memorized,spurious,generalized\n2,1,0,x\n")
    with pytest.raises(ValueError, match="non-numeric"):
        read_fraction_table(path)
    with pytest.raises(ValueError, match="no such file"):
        read_fraction_table(tmp_path / "missing.csv")
