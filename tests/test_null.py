"""Null rates from held-out real data and thresholds calibrated to a null rate ≤ α."""

import numpy as np
import pytest

from memgen.data import circle_pool
from memgen.metrics.null import calibrate, null_rates, null_sizes
from memgen.metrics.nearest import Neighbours, find_neighbours
from memgen.metrics.rules import apply_rule, make_rule, memorization_score, spurious_score
from memgen.metrics.stats import clopper_pearson


def _neighbours(train_dist, synth_dist):
    n = len(train_dist)
    return Neighbours(np.asarray(train_dist, float), np.zeros((n, 2), int),
                      np.asarray(synth_dist, float)[:, None], np.zeros((n, 1), int))


def test_calibrated_thresholds_are_the_loosest_at_level_alpha():
    rng = np.random.default_rng(0)
    d1 = rng.uniform(0.1, 1.0, 200)
    null = _neighbours(np.stack([d1, d1 + rng.uniform(0, 1, 200)], 1), rng.uniform(0, 2, 200))
    rule = make_rule("paper")
    calibrated = calibrate(null, rule, alpha=0.05)
    mem = memorization_score(null.train_dist, rule)
    assert (mem <= calibrated.delta_m).sum() == 10  # ⌊0.05·200⌋
    assert (mem <= np.sort(mem)[10]).sum() == 11  # any looser δ_m flags one more
    labels = apply_rule(null.train_dist, null.synth_dist, calibrated)
    assert (labels == 0).sum() <= 10 and (labels == 1).sum() <= 10
    spur = spurious_score(null.train_dist, null.synth_dist, rule)[mem > calibrated.delta_m]
    assert (spur <= np.nextafter(np.sort(spur)[10], np.inf)).sum() == 11


def test_calibration_with_ties_stays_at_level_alpha():
    null = _neighbours(np.tile([[1.0, 2.0]], (40, 1)), np.full(40, 0.1))  # all scores equal
    calibrated = calibrate(null, make_rule("paper"), alpha=0.1)
    labels = apply_rule(null.train_dist, null.synth_dist, calibrated)
    assert (labels == 2).all()  # flagging any would flag all 40 > ⌊0.1·40⌋ = 4


def test_null_sizes():
    assert null_sizes(10_000, 1000, 4000) == (1000, 4000)
    assert null_sizes(3000, 1000, 4000) == (750, 2250)  # synthetic size kept as far as possible
    assert null_sizes(500, 1000, None) == (500, None)


def test_spurious_null_rate_is_high_on_the_circle_and_calibration_removes_it():
    """A perfect generalizer on a 1-D manifold is flagged spurious often (README, “Null rates”)."""
    pool = circle_pool(60_000, seed=9)
    train, heldout, fresh = pool[:1000], pool[1000:11_000], pool[11_000:16_000]
    rule = make_rule("paper")
    null = null_rates(train, heldout, rule, n_eval=1000, n_synth=4000, alpha=0.05, seed=1)
    assert (null.n_eval, null.n_synth) == (1000, 4000)
    assert null.estimate.fractions[1] > 0.4  # the ≈60% of the issue
    assert null.calibrated_estimate.fractions[0] <= 0.05
    assert null.calibrated_estimate.fractions[1] <= 0.05
    # The calibrated rule holds its level on an independent draw of real data.
    near = find_neighbours(fresh[:1000], train, fresh[1000:5000])
    labels = apply_rule(near.train_dist, near.synth_dist, null.calibrated)
    assert np.mean(labels == 1) < 0.1 and np.mean(labels == 0) < 0.1


def test_null_rate_is_low_in_high_dimension():
    rng = np.random.default_rng(0)
    pool = rng.normal(size=(3000, 200)).astype(np.float32)
    null = null_rates(pool[:500], pool[500:], make_rule("paper"), n_eval=500, n_synth=2000)
    assert null.estimate.fractions[2] > 0.99
    # Each null rate carries the exact interval of its count out of n_eval.
    for est in (null.estimate, null.calibrated_estimate):
        for c, lo, hi in zip(est.counts, est.lo, est.hi):
            assert (lo, hi) == pytest.approx(clopper_pearson(int(c), null.n_eval))
    assert null.as_dict()["interval"] == "clopper-pearson"


def test_alpha_out_of_range():
    with pytest.raises(ValueError, match="alpha"):
        calibrate(_neighbours([[1.0, 2.0]], [1.0]), make_rule(), alpha=1.5)
