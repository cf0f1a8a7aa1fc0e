"""Precision, recall, density, coverage: equal to the prdc package, known cases, bad inputs."""

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch

from memgen.metrics.quality import (ball_hits, heldout_split, prdc, quality_summary,
                                    quality_vs_heldout)
from memgen.metrics.rules import GENERALIZED, MEMORIZED, SPURIOUS

prdc_package = pytest.importorskip("prdc")
NAMES = ("precision", "recall", "density", "coverage")


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def reference(real, fake, k):
    with contextlib.redirect_stdout(io.StringIO()):  # compute_prdc prints the set sizes
        return prdc_package.compute_prdc(real, fake, k)


def assert_matches_package(real, fake, k, **kwargs):
    ours, theirs = prdc(real, fake, k, **kwargs), reference(real, fake, k)
    for name in NAMES:
        assert getattr(ours, name) == pytest.approx(float(theirs[name]), abs=1e-6), name
    return ours


@pytest.mark.parametrize("n_real, n_fake, dim, k, shift", [
    (60, 40, 2, 5, 0.0), (120, 90, 8, 3, 0.5), (40, 100, 20, 1, 1.0), (80, 80, 5, 10, 0.2),
    (25, 30, 64, 4, 0.0)])
def test_equals_prdc_package_on_random_data(n_real, n_fake, dim, k, shift):
    rng = np.random.default_rng(n_real * dim + k)
    real = rng.normal(size=(n_real, dim))
    fake = 1.2 * rng.normal(size=(n_fake, dim)) + shift
    ours = assert_matches_package(real, fake, k)
    assert (ours.k, ours.n_real, ours.n_fake) == (k, n_real, n_fake)
    assert ours.in_manifold.shape == (n_fake,) and ours.in_manifold.dtype == bool


@pytest.mark.parametrize("budget", [64, 1000, 2**20])
def test_equals_prdc_package_with_ties_and_duplicates_in_small_blocks(budget):
    """Integer grid: exact distance ties with the radii (decided by the direct path, strict <)."""
    rng = np.random.default_rng(budget)
    real = rng.integers(-2, 3, size=(70, 3)).astype(np.float64)
    fake = rng.integers(-2, 3, size=(50, 3)).astype(np.float64)
    assert_matches_package(real, fake, 4, memory_budget=budget)


def test_ball_hits_equals_brute_force():
    rng = np.random.default_rng(3)
    points, centres = torch.from_numpy(rng.normal(size=(37, 6))), torch.from_numpy(
        rng.normal(size=(23, 6)))
    radii = torch.from_numpy(rng.uniform(0.5, 3.0, size=23))
    inside = torch.cdist(points, centres) < radii[None, :]  # (37, 23)
    count, hit = ball_hits(points, centres, radii, memory_budget=200)
    np.testing.assert_array_equal(count.numpy(), inside.sum(1).numpy())
    np.testing.assert_array_equal(hit.numpy(), inside.any(0).numpy())


def test_fake_equal_to_a_real_subset_has_precision_one():
    rng = np.random.default_rng(4)
    real = rng.normal(size=(50, 4))
    q = prdc(real, real[::3], 5)
    assert q.precision == 1.0 and q.in_manifold.all()
    assert prdc(real, real, 5).coverage == 1.0  # every real point is its own nearest fake


def test_far_away_fake_has_precision_and_coverage_zero():
    rng = np.random.default_rng(5)
    real, fake = rng.normal(size=(40, 3)), rng.normal(size=(30, 3)) + 1e3
    q = prdc(real, fake, 5)
    assert (q.precision, q.recall, q.density, q.coverage) == (0.0, 0.0, 0.0, 0.0)


def test_precision_of_a_label_equals_prdc_on_the_subset():
    rng = np.random.default_rng(6)
    real = rng.normal(size=(60, 3))
    fake = np.concatenate([rng.normal(size=(30, 3)), rng.normal(size=(20, 3)) + 2.0])
    labels = np.array([GENERALIZED] * 30 + [SPURIOUS] * 20)
    q = prdc(real, fake, 5)
    for code in (GENERALIZED, SPURIOUS):
        subset = fake[labels == code]
        assert q.precision_of(labels == code) == pytest.approx(
            float(reference(real, subset, 5)["precision"]), abs=1e-12)
    assert q.precision_of(labels == MEMORIZED) is None
    summary = quality_summary_of(q, labels)
    assert summary["precision_by_label"]["memorized"] is None
    assert summary["precision_by_label"]["spurious"] == q.precision_of(labels == SPURIOUS)


def quality_summary_of(q, labels):
    from memgen.metrics.quality import HeldoutQuality

    return quality_summary(HeldoutQuality(quality=q, baseline=None, n_heldout=0), labels)


def test_heldout_split_is_disjoint_deterministic_and_sized():
    ref, base = heldout_split(100, 30, seed=7)
    assert len(base) == 30 and len(ref) == 30 and not set(ref) & set(base)  # equal sizes
    assert set(ref) | set(base) <= set(range(100))
    again = heldout_split(100, 30, seed=7)
    np.testing.assert_array_equal(ref, again[0])
    assert len(heldout_split(50, 30, seed=7)[0]) == 25  # what the baseline of 25 leaves
    ref, base = heldout_split(10, 30, seed=7)  # small pool: half each
    assert (len(ref), len(base)) == (5, 5)


def test_quality_vs_heldout_uses_the_split_and_the_feature_space():
    rng = np.random.default_rng(8)
    heldout = rng.normal(size=(90, 2, 2)).astype(np.float32)  # images flattened by the l2 map
    eval_set = rng.normal(size=(30, 2, 2)).astype(np.float32)
    result = quality_vs_heldout(eval_set, heldout, seed=1)
    ref, base = heldout_split(90, 30, seed=1)
    flat = heldout.reshape(90, -1).astype(np.float64)
    expected = reference(flat[ref], eval_set.reshape(30, -1).astype(np.float64), 5)
    assert result.quality.precision == pytest.approx(float(expected["precision"]), abs=1e-6)
    assert result.quality.coverage == pytest.approx(float(expected["coverage"]), abs=1e-6)
    base_expected = reference(flat[ref], flat[base], 5)
    assert result.baseline.recall == pytest.approx(float(base_expected["recall"]), abs=1e-6)
    assert (result.quality.n_real, result.baseline.n_fake, result.n_heldout) == (30, 30, 90)


def test_quality_vs_heldout_shrinks_k_and_gives_up_below_two():
    rng = np.random.default_rng(9)
    small = quality_vs_heldout(rng.normal(size=(20, 3)), rng.normal(size=(6, 3)))
    assert small.quality.k == 2 and small.baseline.n_fake == 3  # reference and baseline: 3 each
    assert quality_vs_heldout(rng.normal(size=(1, 3)), rng.normal(size=(20, 3))) is None


@pytest.mark.parametrize("real, fake, k, phrase", [
    (np.zeros((0, 3)), np.ones((4, 3)), 1, "empty"),
    (np.ones((4, 3)), np.zeros((0, 3)), 1, "empty"),
    (np.ones((5, 3)), np.ones((6, 3)), 5, "k=5"),
    (np.ones((9, 3)), np.ones((3, 3)), 3, "k=3"),
    (np.ones((6, 3)), np.ones((6, 3)), 0, "positive integer"),
    (np.ones((6, 3)), np.ones((6, 2)), 2, "dimensions"),
    (np.full((6, 3), np.nan), np.ones((6, 3)), 2, "NaN"),
    (np.ones(6), np.ones((6, 3)), 2, "leading sample axis"),
])
def test_bad_inputs_are_refused(real, fake, k, phrase):
    with pytest.raises(ValueError, match=phrase):
        prdc(real, fake, k)


# ----------------------------------------------------------------- fractions.csv and report


def stage(K, generalized_precision, baseline_precision, with_quality=True):
    from memgen.experiments.sweep import StageResult

    summary = {"fractions": {"memorized": 0.2, "spurious": 0.3, "generalized": 0.5},
               "ci95": {n: [0.0, 1.0] for n in ("memorized", "spurious", "generalized")},
               "n_eval": 10, "null": {"fractions": {"memorized": 0.0, "spurious": 0.1,
                                                    "generalized": 0.9}}}
    if with_quality:
        summary["quality"] = {
            "precision": 0.8, "recall": 0.7, "density": 0.9, "coverage": 0.6, "k": 5,
            "n_real": 40, "n_fake": 10,
            "precision_by_label": {"memorized": None, "spurious": 0.75,
                                   "generalized": generalized_precision},
            "baseline": {"precision": baseline_precision, "recall": 0.72, "density": 1.0,
                         "coverage": 0.65, "n": 10}}
    return StageResult(K, summary, Path("."), Path("."), Path("."))


def test_fractions_csv_carries_quality_and_still_reads(tmp_path):
    import csv

    from memgen.experiments.sweep import write_fractions
    from memgen.metrics.capacity import read_fraction_table

    path = tmp_path / "fractions.csv"
    write_fractions(path, [stage(9, 0.5, 0.9), stage(2, 0.85, 0.9, with_quality=False)])
    rows = list(csv.DictReader(path.open(newline="")))
    assert [r["K"] for r in rows] == ["2", "9"]
    assert all(rows[0][c] == "" for c in ("precision", "precision_generalized",
                                          "baseline_recall"))
    r = rows[1]
    assert (float(r["precision"]), float(r["recall"]), float(r["density"]),
            float(r["coverage"])) == (0.8, 0.7, 0.9, 0.6)
    assert r["precision_memorized"] == "" and float(r["precision_spurious"]) == 0.75
    assert (float(r["baseline_precision"]), float(r["baseline_recall"])) == (0.9, 0.72)
    table = read_fraction_table(path)  # unknown columns are ignored
    assert list(table.K) == [2, 9] and table.fractions.shape == (2, 3)


def test_report_quality_table_flags_low_quality_generalized_samples():
    from memgen.report.html import _quality_section

    text = _quality_section([stage(64, 0.85, 0.9), stage(9, 0.5, 0.9), stage(2, 0.1, 0.9, False)])
    assert text.count("<tr>") == 3  # header, K = 9, K = 64
    assert "Generalized samples at K=9 are of lower quality than held-out data: " \
           "precision 0.500 vs 0.900." in text
    assert "K=64" not in text  # 0.85 is within 0.1 of 0.9
    assert _quality_section([stage(2, 0.1, 0.9, with_quality=False)]) == ""
