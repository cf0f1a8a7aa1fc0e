"""The detection rules (paper eqs. 4–6) on hand-computed cases, thresholds included."""

import numpy as np
import pytest

from memgen.metrics.nearest import find_neighbours
from memgen.metrics.rules import (GENERALIZED, MEMORIZED, SPURIOUS, Rule, apply_rule, make_rule,
                                  memorization_score, spurious_score)

M, S, G = MEMORIZED, SPURIOUS, GENERALIZED


def test_paper_rule_hand_computed():
    # columns: d1, d2 (training), s1 (synthetic)
    rows = np.array([
        [1.0, 4.0, 9.0],   # d1/d2 = 0.25 ≤ 1/3 → memorized (even though s1 is large)
        [1.0, 2.0, 0.1],   # d1/d2 = 0.5; s1/(d1+s1) = 0.0909 ≤ 1/3 → spurious
        [1.0, 2.0, 1.0],   # 0.5; s1/(d1+s1) = 0.5 → generalized
        [0.0, 0.0, 0.0],   # identical to two training points: 0/(0+ε) = 0 → memorized
        [2.0, 3.0, 0.0],   # s1 = 0: 0/(2+0+ε) = 0 → spurious
    ])
    rule = make_rule("paper")
    labels = apply_rule(rows[:, :2], rows[:, 2:], rule)
    np.testing.assert_array_equal(labels, [M, S, G, M, S])
    np.testing.assert_allclose(memorization_score(rows[:, :2], rule),
                               [0.25, 0.5, 0.5, 0.0, 2 / 3], rtol=1e-5)
    np.testing.assert_allclose(spurious_score(rows[:, :2], rows[:, 2:], rule),
                               [0.9, 0.1 / 1.1, 0.5, 0.0, 0.0], rtol=1e-5)


def test_paper_rule_exactly_at_thresholds_counts_as_detected():
    # ε = 0 so that the ratios are exact binary fractions: d1/d2 = 0.25 = δ_m,
    # s1/(d1+s1) = 1/(3+1) = 0.25 = δ_s.
    rule = Rule("paper", delta_m=0.25, delta_s=0.25, eps=0.0)
    at_m = apply_rule(np.array([[1.0, 4.0]]), np.array([[100.0]]), rule)
    just_above_m = apply_rule(np.array([[np.nextafter(1.0, 2.0), 4.0]]), np.array([[100.0]]),
                              rule)
    at_s = apply_rule(np.array([[3.0, 4.0]]), np.array([[1.0]]), rule)
    just_above_s = apply_rule(np.array([[3.0, 4.0]]), np.array([[np.nextafter(1.0, 2.0)]]), rule)
    assert (at_m[0], just_above_m[0], at_s[0], just_above_s[0]) == (M, G, S, G)


def test_paper_rule_epsilon_is_in_the_denominators():
    rule = make_rule("paper")  # ε = 1e-6
    # d1/(d2+ε) with d1 = d2/3 exactly: ε pushes the ratio just below 1/3 → memorized.
    assert apply_rule(np.array([[1.0, 3.0]]), np.array([[5.0]]), rule)[0] == M
    # d2 = 0 (duplicated training point), d1 = 0: ratio 0/ε = 0 → memorized, no division error.
    assert memorization_score(np.array([[0.0, 0.0]]), rule)[0] == 0.0


def test_absolute_rule_hand_computed_and_at_thresholds():
    rule = make_rule("absolute", delta_m=0.5, delta_s=0.25)
    train = np.array([[0.5, 0.6], [0.75, 0.8], [0.75, 0.8], [0.2, 9.0]])
    synth = np.array([[0.0], [0.25], [0.5], [0.0]])
    # d1 = δ_m → memorized; s1 = δ_s → spurious; neither → generalized; d1 small → memorized
    np.testing.assert_array_equal(apply_rule(train, synth, rule), [M, S, G, M])


def test_absolute_rule_works_with_a_single_training_neighbour():
    rule = make_rule("absolute", delta_m=0.1, delta_s=0.1)
    np.testing.assert_array_equal(apply_rule(np.array([[0.05], [1.0]]),
                                             np.array([[1.0], [0.05]]), rule), [M, S])


def test_paper_rule_refuses_a_single_training_neighbour():
    with pytest.raises(ValueError, match="second nearest training sample"):
        apply_rule(np.array([[0.05]]), np.array([[1.0]]), make_rule("paper"))


def test_defaults_and_unknown_rule():
    assert make_rule("paper").delta_m == pytest.approx(1 / 3)
    assert make_rule("paper").delta_s == pytest.approx(1 / 3)
    assert (make_rule("absolute").delta_m, make_rule("absolute").delta_s) == (0.03, 0.02)
    with pytest.raises(ValueError, match="unknown rule 'foo'"):
        make_rule("foo")
    with pytest.raises(ValueError, match="finite"):
        make_rule("paper", delta_m=float("nan"))


def test_find_neighbours_self_synthetic_set_excludes_self():
    x = np.array([[0.0], [0.0], [5.0], [5.1]])
    train = np.array([[10.0], [20.0]])
    near = find_neighbours(x, train)
    np.testing.assert_array_equal(near.synth_idx[:, 0], [1, 0, 3, 2])
    np.testing.assert_allclose(near.synth_dist[:, 0], [0.0, 0.0, 0.1, 0.1], atol=1e-12)
    assert near.train_dist.shape == (4, 2)  # k defaults to min(5, |S|)


def test_find_neighbours_explicit_k_must_fit():
    with pytest.raises(ValueError, match="larger than the training set"):
        find_neighbours(np.zeros((2, 3)), np.zeros((3, 3)), np.zeros((9, 3)), k=4)
    with pytest.raises(ValueError, match="larger than the synthetic set"):
        find_neighbours(np.zeros((2, 3)), np.zeros((9, 3)), np.zeros((3, 3)), k=4)


def test_end_to_end_labels_on_planted_points():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(50, 16)) * 10
    attractor = rng.normal(size=16) * 10
    eval_set = np.stack([train[3] + 1e-3, attractor + 1e-3, rng.normal(size=16) * 10])
    synth = np.concatenate([attractor + rng.normal(size=(5, 16)) * 1e-3,
                            rng.normal(size=(200, 16)) * 10])
    near = find_neighbours(eval_set, train, synth)
    np.testing.assert_array_equal(apply_rule(near.train_dist, near.synth_dist, make_rule()),
                                  [M, S, G])
