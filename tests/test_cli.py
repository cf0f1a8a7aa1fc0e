"""Tests for the ``memgen`` command line (README, “Command line”), on small planted data with
known answers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from memgen.cli import cli

LABELS = ("memorized", "spurious", "generalized")
MEM, SPUR, GEN = 0, 1, 2
SUMMARY_KEYS = {"n_eval", "counts", "fractions", "ci95", "rule", "delta_m", "delta_s", "metric"}
ARRAY_KEYS = {"labels", "train_dist", "train_idx", "synth_dist", "synth_idx"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
D = 16


# ----------------------------------------------------------------------------- helpers


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def ok(result):
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def save(path: Path, array, key: str = "samples") -> Path:
    if path.suffix == ".npy":
        np.save(path, array)
    else:
        np.savez(path, **{key: array})
    return path


def read_out(out: Path):
    summary = json.loads((out / "summary.json").read_text())
    with np.load(out / "labels.npz", allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    return summary, arrays


def flat(x):
    return np.asarray(x, dtype=np.float64).reshape(len(x), -1)


def pairwise(a, b):
    """Brute-force Euclidean (not squared) distances in float64."""
    a, b = flat(a), flat(b)
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))


def paper_labels(eval_set, train, synth=None):
    """Independent numpy implementation of eqs. 4-6 (for checking the planted truth)."""
    dt = np.sort(pairwise(eval_set, train), axis=1)
    ds = pairwise(eval_set, eval_set if synth is None else synth)
    if synth is None:
        np.fill_diagonal(ds, np.inf)
    s1 = ds.min(axis=1)
    mem = dt[:, 0] / (dt[:, 1] + 1e-6) <= 1 / 3
    spur = (s1 / (dt[:, 0] + s1 + 1e-6) <= 1 / 3) & ~mem
    return np.where(mem, MEM, np.where(spur, SPUR, GEN))


def check_neighbours(arrays, eval_set, train, synth=None, k=None):
    """Shapes, dtypes, ascending order and brute-force distances of labels.npz."""
    n = len(eval_set)
    self_synth = synth is None
    synth = eval_set if self_synth else synth
    assert arrays["labels"].dtype == np.int8 and arrays["labels"].shape == (n,)
    assert set(np.unique(arrays["labels"])) <= {MEM, SPUR, GEN}
    full_t, full_s = pairwise(eval_set, train), pairwise(eval_set, synth)
    if self_synth:
        np.fill_diagonal(full_s, np.inf)
    for which, full, ref in (("train", full_t, train), ("synth", full_s, synth)):
        dist, idx = arrays[f"{which}_dist"], arrays[f"{which}_idx"]
        assert dist.ndim == 2 and dist.shape == idx.shape and dist.shape[0] == n
        if k is not None:
            assert dist.shape[1] == k
        assert np.issubdtype(dist.dtype, np.floating)
        assert np.issubdtype(idx.dtype, np.integer)
        assert (idx >= 0).all() and (idx < len(ref)).all()
        assert (np.diff(dist, axis=1) >= 0).all(), f"{which}_dist not ascending"
        # the stored distance is the Euclidean distance (not squared) to the stored index
        np.testing.assert_allclose(dist, np.take_along_axis(full, idx, axis=1),
                                   rtol=1e-6, atol=1e-6)
        # and the stored neighbours are the k nearest ones
        np.testing.assert_allclose(dist, np.sort(full, axis=1)[:, :dist.shape[1]],
                                   rtol=1e-6, atol=1e-6)
        # indices within a row are distinct
        assert all(len(set(row)) == len(row) for row in idx.tolist())


def check_summary(summary, counts):
    assert SUMMARY_KEYS <= set(summary)
    n = sum(counts)
    assert summary["n_eval"] == n
    for key in ("counts", "fractions", "ci95"):
        assert set(summary[key]) == set(LABELS)
    assert [summary["counts"][name] for name in LABELS] == list(counts)
    fractions = [summary["fractions"][name] for name in LABELS]
    assert sum(fractions) == pytest.approx(1.0)
    np.testing.assert_allclose(fractions, np.array(counts) / n)
    for name in LABELS:
        lo, hi = summary["ci95"][name]
        assert 0 <= lo <= summary["fractions"][name] <= hi <= 1


def hidden_leftovers(folder: Path):
    return sorted(p.name for p in folder.rglob(".*") if p.name != ".memgen")


def assert_fails(result, phrase: str, out: Path | None, root: Path, usage: bool = False):
    """Non-zero exit, a clean 'Error: ...' line with ``phrase``, no traceback, no output."""
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # no traceback
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, result.output
    assert phrase.lower() in errors[0].lower(), errors[0]
    if usage:
        assert result.exit_code == 2
    else:
        assert result.exit_code == 1
        assert result.output.strip() == errors[0], "the error should be a single line"
    if out is not None:
        assert not out.exists()
    assert hidden_leftovers(root) == []


# ----------------------------------------------------------------------------- planted data


def planted(tmp_path: Path, seed: int = 0):
    """train, eval, synth with 5 memorized, 4 spurious and 6 generalized samples (shuffled)."""
    rng = np.random.default_rng(seed)
    train = rng.normal(size=(20, D)).astype(np.float32)
    memorized = train[[0, 3, 7, 11, 15]] + 1e-3 * rng.normal(size=(5, D))
    centres = rng.normal(size=(4, D))
    centres *= 25 / np.linalg.norm(centres, axis=1, keepdims=True)  # far from the training set
    spurious = centres + 1e-3 * rng.normal(size=(4, D))
    generalized = rng.normal(size=(6, D))
    copies = np.repeat(centres, 5, axis=0) + 1e-3 * rng.normal(size=(20, D))
    synth = np.concatenate([copies, rng.normal(size=(40, D))]).astype(np.float32)
    synth = synth[rng.permutation(len(synth))]
    eval_set = np.concatenate([memorized, spurious, generalized]).astype(np.float32)
    truth = np.array([MEM] * 5 + [SPUR] * 4 + [GEN] * 6)
    order = rng.permutation(len(eval_set))
    eval_set, truth = eval_set[order], truth[order]
    assert (paper_labels(eval_set, train, synth) == truth).all()  # the plant is sound
    heldout = rng.normal(size=(40, D)).astype(np.float32)
    return {"train": train, "eval": eval_set, "synth": synth, "heldout": heldout,
            "truth": truth,
            "paths": {name: save(tmp_path / f"{name}.npz", arr) for name, arr in
                      (("train", train), ("eval", eval_set), ("synth", synth),
                       ("heldout", heldout))}}


def planted_self(tmp_path: Path, seed: int = 1):
    """train and an eval set that is its own synthetic set, with exact duplicates."""
    rng = np.random.default_rng(seed)
    train = rng.normal(size=(20, D)).astype(np.float32)
    memorized = train[[1, 4, 9, 16]] + 1e-3 * rng.normal(size=(4, D))
    centres = rng.normal(size=(3, D))
    centres *= 25 / np.linalg.norm(centres, axis=1, keepdims=True)
    near_copies = np.repeat(centres[:2], 3, axis=0) + 1e-3 * rng.normal(size=(6, D))
    exact_dups = np.repeat(centres[2:], 2, axis=0)  # two identical rows
    generalized = rng.normal(size=(5, D))
    eval_set = np.concatenate([memorized, near_copies, exact_dups, generalized]).astype(np.float32)
    truth = np.array([MEM] * 4 + [SPUR] * 8 + [GEN] * 5)
    order = rng.permutation(len(eval_set))
    eval_set, truth = eval_set[order], truth[order]
    assert (paper_labels(eval_set, train) == truth).all()
    dup_rows = np.flatnonzero((eval_set == centres[2].astype(np.float32)).all(axis=1))
    assert len(dup_rows) == 2
    return {"train": train, "eval": eval_set, "truth": truth, "dup_rows": dup_rows,
            "paths": {"train": save(tmp_path / "train.npz", train),
                      "eval": save(tmp_path / "eval.npz", eval_set)}}


def counts_of(truth):
    return tuple(int((truth == c).sum()) for c in (MEM, SPUR, GEN))


# ----------------------------------------------------------------------------- classify: round trip


def test_classify_round_trip_with_synth(tmp_path):
    data = planted(tmp_path)
    p, out = data["paths"], tmp_path / "out"
    result = ok(run("classify", "--train", p["train"], "--eval", p["eval"], "--synth", p["synth"],
                    "--out", out))
    assert "summary.json" in result.output
    summary, arrays = read_out(out)
    check_summary(summary, counts_of(data["truth"]))
    assert summary["counts"] == {"memorized": 5, "spurious": 4, "generalized": 6}
    assert summary["rule"] == "paper"
    assert summary["delta_m"] == pytest.approx(1 / 3)
    assert summary["delta_s"] == pytest.approx(1 / 3)
    assert summary["metric"] == "l2"
    assert "null" not in summary
    assert set(arrays) == ARRAY_KEYS
    np.testing.assert_array_equal(arrays["labels"], data["truth"])
    check_neighbours(arrays, data["eval"], data["train"], data["synth"], k=5)
    # spurious samples find the planted copies in S'
    spur = data["truth"] == SPUR
    assert (arrays["synth_dist"][spur, 0] < 0.05).all()
    assert (arrays["train_dist"][data["truth"] == MEM, 0] < 0.05).all()
    assert sorted(p.name for p in out.iterdir()) == [".memgen", "labels.npz", "summary.json"]
    assert hidden_leftovers(tmp_path) == []


def test_classify_explicit_k(tmp_path):
    data = planted(tmp_path)
    p, out = data["paths"], tmp_path / "out"
    ok(run("classify", "--train", p["train"], "--eval", p["eval"], "--synth", p["synth"],
           "--k", 3, "--out", out))
    _, arrays = read_out(out)
    check_neighbours(arrays, data["eval"], data["train"], data["synth"], k=3)
    np.testing.assert_array_equal(arrays["labels"], data["truth"])


def test_classify_without_synth_excludes_self(tmp_path):
    data = planted_self(tmp_path)
    p, out = data["paths"], tmp_path / "out"
    ok(run("classify", "--train", p["train"], "--eval", p["eval"], "--out", out))
    summary, arrays = read_out(out)
    check_summary(summary, counts_of(data["truth"]))
    np.testing.assert_array_equal(arrays["labels"], data["truth"])
    check_neighbours(arrays, data["eval"], data["train"], None, k=5)
    rows = np.arange(len(data["eval"]))[:, None]
    assert (arrays["synth_idx"] != rows).all(), "a sample matched itself"
    assert (arrays["synth_dist"][:, 0] > 0).sum() == len(rows) - 2
    a, b = data["dup_rows"]  # exact duplicates find each other at distance 0
    assert arrays["synth_idx"][a, 0] == b and arrays["synth_idx"][b, 0] == a
    assert arrays["synth_dist"][a, 0] == 0 and arrays["synth_dist"][b, 0] == 0
    assert arrays["labels"][a] == SPUR and arrays["labels"][b] == SPUR


def test_classify_heldout_reports_null_rates(tmp_path):
    data = planted(tmp_path)
    p, out = data["paths"], tmp_path / "out"
    ok(run("classify", "--train", p["train"], "--eval", p["eval"], "--synth", p["synth"],
           "--heldout", p["heldout"], "--out", out))
    summary, arrays = read_out(out)
    check_summary(summary, counts_of(data["truth"]))
    null = summary["null"]
    assert set(null["fractions"]) == set(LABELS)
    assert sum(null["fractions"].values()) == pytest.approx(1.0)
    assert all(0 <= v <= 1 for v in null["fractions"].values())
    cal = null["calibrated"]
    assert np.isfinite(cal["delta_m"]) and np.isfinite(cal["delta_s"])
    assert sum(cal["fractions"].values()) == pytest.approx(1.0)
    # without --calibrate, the labels use the default thresholds
    assert summary["delta_m"] == pytest.approx(1 / 3)
    np.testing.assert_array_equal(arrays["labels"], data["truth"])


def test_classify_heldout_reports_quality(tmp_path):
    """prdc of S_eval vs the held-out reference part, a disjoint baseline, per-label precision."""
    import contextlib
    import io

    from memgen.metrics.quality import heldout_split

    prdc_package = pytest.importorskip("prdc")
    data = planted(tmp_path)
    p, out = data["paths"], tmp_path / "out"
    result = ok(run("classify", "--train", p["train"], "--eval", p["eval"], "--synth", p["synth"],
                    "--heldout", p["heldout"], "--out", out))
    summary, arrays = read_out(out)
    q = summary["quality"]
    ref, base = heldout_split(40, 15, seed=0)
    assert (q["k"], q["n_real"], q["n_fake"], q["baseline"]["n"]) == (5, 15, 15, 15)
    heldout = flat(data["heldout"])
    with contextlib.redirect_stdout(io.StringIO()):
        expected = prdc_package.compute_prdc(heldout[ref], flat(data["eval"]), 5)
        expected_base = prdc_package.compute_prdc(heldout[ref], heldout[base], 5)
    for name in ("precision", "recall", "density", "coverage"):
        assert q[name] == pytest.approx(float(expected[name]), abs=1e-6)
        assert q["baseline"][name] == pytest.approx(float(expected_base[name]), abs=1e-6)
    radii = np.sort(pairwise(heldout[ref], heldout[ref]), axis=1)[:, 5]  # k = 5, self at 0
    inside = (pairwise(data["eval"], heldout[ref]) < radii).any(axis=1)
    for code, name in enumerate(LABELS):
        want = inside[arrays["labels"] == code].mean()
        assert q["precision_by_label"][name] == pytest.approx(want, abs=1e-12)
    assert "quality vs held-out" in result.output and "precision by label" in result.output
    assert f"precision {q['precision']:.3f} (held-out {q['baseline']['precision']:.3f})" \
        in result.output


def test_classify_calibrate_uses_calibrated_thresholds(tmp_path):
    data = planted(tmp_path)
    p, out = data["paths"], tmp_path / "out"
    ok(run("classify", "--train", p["train"], "--eval", p["eval"], "--synth", p["synth"],
           "--heldout", p["heldout"], "--calibrate", "--out", out))
    summary, _ = read_out(out)
    cal = summary["null"]["calibrated"]
    assert summary["delta_m"] == pytest.approx(cal["delta_m"])
    assert summary["delta_s"] == pytest.approx(cal["delta_s"])
    assert sum(summary["fractions"].values()) == pytest.approx(1.0)


def test_classify_calibrate_needs_heldout(tmp_path):
    data = planted(tmp_path)
    p, out = data["paths"], tmp_path / "out"
    result = run("classify", "--train", p["train"], "--eval", p["eval"], "--calibrate",
                 "--out", out)
    assert_fails(result, "--heldout", out, tmp_path)


def test_classify_absolute_rule_with_thresholds(tmp_path):
    data = planted(tmp_path)
    p = data["paths"]
    out = tmp_path / "abs"
    ok(run("classify", "--train", p["train"], "--eval", p["eval"], "--synth", p["synth"],
           "--rule", "absolute", "--delta-m", 0.1, "--delta-s", 0.2, "--out", out))
    summary, arrays = read_out(out)
    assert summary["rule"] == "absolute"
    assert summary["delta_m"] == pytest.approx(0.1)
    assert summary["delta_s"] == pytest.approx(0.2)
    np.testing.assert_array_equal(arrays["labels"], data["truth"])
    d1, s1 = arrays["train_dist"][:, 0], arrays["synth_dist"][:, 0]
    expected = np.where(d1 <= 0.1, MEM, np.where(s1 <= 0.2, SPUR, GEN))
    np.testing.assert_array_equal(arrays["labels"], expected)
    # δ_m = 0: nothing is an exact copy, so the planted copies become generalized
    out0 = tmp_path / "abs0"
    ok(run("classify", "--train", p["train"], "--eval", p["eval"], "--synth", p["synth"],
           "--rule", "absolute", "--delta-m", 0, "--delta-s", 0.2, "--out", out0))
    summary0, _ = read_out(out0)
    assert summary0["delta_m"] == 0
    assert summary0["counts"] == {"memorized": 0, "spurious": 4, "generalized": 11}


def test_classify_absolute_rule_needs_thresholds_in_the_metrics_units(tmp_path):
    # The published absolute thresholds (0.03, 0.02) are LPIPS distances: on l2 pixels they
    # would call the planted copies generalized. Without explicit thresholds: refused.
    data = planted(tmp_path)
    p, out = data["paths"], tmp_path / "out"
    for extra in ([], ["--delta-m", "0.1"], ["--delta-s", "0.1"]):
        result = run("classify", "--train", p["train"], "--eval", p["eval"], "--synth",
                     p["synth"], "--rule", "absolute", *extra, "--out", out)
        assert result.exit_code == 1, result.output
        assert "give both delta_m and delta_s" in result.output
        assert not out.exists()


def test_classify_npy_and_single_unnamed_key(tmp_path):
    data = planted(tmp_path)
    train_npy = save(tmp_path / "train.npy", data["train"])
    synth_ref = tmp_path / "synth_ref.npz"
    np.savez(synth_ref, data["synth"])  # the reference code's layout: key arr_0
    eval_other = save(tmp_path / "eval_other.npz", data["eval"], key="images")
    out = tmp_path / "out"
    ok(run("classify", "--train", train_npy, "--eval", eval_other, "--synth", synth_ref,
           "--out", out))
    summary, arrays = read_out(out)
    check_summary(summary, counts_of(data["truth"]))
    np.testing.assert_array_equal(arrays["labels"], data["truth"])
    check_neighbours(arrays, data["eval"], data["train"], data["synth"])


def test_classify_samples_key_wins_over_others(tmp_path):
    data = planted(tmp_path)
    both = tmp_path / "both.npz"
    np.savez(both, samples=data["eval"], labels=np.zeros(3))
    out = tmp_path / "out"
    ok(run("classify", "--train", data["paths"]["train"], "--eval", both,
           "--synth", data["paths"]["synth"], "--out", out))
    _, arrays = read_out(out)
    np.testing.assert_array_equal(arrays["labels"], data["truth"])


def images_uint8(tmp_path: Path, seed: int = 2):
    rng = np.random.default_rng(seed)
    train = rng.integers(0, 256, size=(12, 1, 8, 8), dtype=np.uint8)
    fresh = rng.integers(0, 256, size=(5, 1, 8, 8), dtype=np.uint8)
    eval_set = np.concatenate([train[[2, 5, 8]], fresh])
    return train, eval_set, save(tmp_path / "train.npz", train), save(tmp_path / "eval.npz",
                                                                       eval_set)


def test_classify_uint8_images_are_scaled(tmp_path):
    train, eval_set, train_path, eval_path = images_uint8(tmp_path)
    out = tmp_path / "out"
    ok(run("classify", "--train", train_path, "--eval", eval_path, "--out", out))
    summary, arrays = read_out(out)
    scaled = lambda x: x.astype(np.float64) / 127.5 - 1.0  # noqa: E731
    check_neighbours(arrays, scaled(eval_set), scaled(train), None)
    assert arrays["train_dist"].max() <= 2 * np.sqrt(64) + 1e-9  # [-1, 1], not [0, 255]
    assert (arrays["train_dist"][:3, 0] == 0).all()
    np.testing.assert_array_equal(arrays["train_idx"][:3, 0], [2, 5, 8])
    assert (arrays["labels"][:3] == MEM).all()
    assert summary["counts"]["memorized"] >= 3


def test_classify_rerun_replaces_output(tmp_path):
    data = planted(tmp_path)
    p, out = data["paths"], tmp_path / "out"
    ok(run("classify", "--train", p["train"], "--eval", p["eval"], "--synth", p["synth"],
           "--out", out))
    (out / "stale.txt").write_text("from an earlier run")
    ok(run("classify", "--train", p["train"], "--eval", p["eval"], "--synth", p["synth"],
           "--rule", "absolute", "--delta-m", 0, "--delta-s", 0.2, "--out", out))
    summary, arrays = read_out(out)
    assert summary["rule"] == "absolute"
    assert summary["counts"]["memorized"] == 0
    assert (arrays["labels"] != MEM).all()
    assert sorted(p.name for p in out.iterdir()) == [".memgen", "labels.npz", "summary.json"]
    assert hidden_leftovers(tmp_path) == []


def test_classify_into_empty_existing_folder(tmp_path):
    data = planted(tmp_path)
    p, out = data["paths"], tmp_path / "out"
    out.mkdir()
    ok(run("classify", "--train", p["train"], "--eval", p["eval"], "--out", out))
    assert (out / "summary.json").is_file() and (out / "labels.npz").is_file()


def test_classify_creates_missing_parents(tmp_path):
    data = planted(tmp_path)
    p, out = data["paths"], tmp_path / "a" / "b" / "out"
    ok(run("classify", "--train", p["train"], "--eval", p["eval"], "--out", out))
    assert (out / "summary.json").is_file()
    assert hidden_leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- classify: bad inputs


@pytest.fixture
def good(tmp_path):
    rng = np.random.default_rng(3)
    arr = rng.normal(size=(10, 4)).astype(np.float32)
    return {"train": save(tmp_path / "train.npz", arr), "eval": save(tmp_path / "eval.npz", arr),
            "arr": arr, "out": tmp_path / "out", "root": tmp_path}


def classify_fails(good, phrase, *extra, train=None, eval_=None, usage=False):
    result = run("classify", "--train", train or good["train"], "--eval", eval_ or good["eval"],
                 *extra, "--out", good["out"])
    assert_fails(result, phrase, good["out"], good["root"], usage=usage)
    return result


def test_bad_shape_mismatch_train_eval(good, tmp_path):
    bad = save(tmp_path / "e8.npz", np.zeros((5, 8), np.float32))
    result = classify_fails(good, "shape", eval_=bad)
    assert "(8,)" in result.output and "(4,)" in result.output


def test_bad_shape_mismatch_eval_synth(good, tmp_path):
    bad = save(tmp_path / "s8.npz", np.zeros((30, 8), np.float32))
    result = classify_fails(good, "shape", "--synth", bad)
    assert "synth" in result.output


def test_bad_shape_mismatch_heldout(good, tmp_path):
    bad = save(tmp_path / "h8.npz", np.zeros((30, 2, 2, 2), np.float32))
    classify_fails(good, "heldout", "--heldout", bad)


def test_bad_nan_in_eval(good, tmp_path):
    arr = good["arr"].copy()
    arr[3, 1] = np.nan
    classify_fails(good, "NaN", eval_=save(tmp_path / "nan.npz", arr))


def test_bad_inf_in_train(good, tmp_path):
    arr = good["arr"].copy()
    arr[0, 0] = -np.inf
    result = classify_fails(good, "Inf", train=save(tmp_path / "inf.npz", arr))
    assert "--train" in result.output


def test_bad_empty_set(good, tmp_path):
    classify_fails(good, "empty", eval_=save(tmp_path / "empty.npz", np.zeros((0, 4), np.float32)))


def test_bad_single_training_sample_paper_rule(good, tmp_path):
    one = save(tmp_path / "one.npz", good["arr"][:1])
    classify_fails(good, "second nearest", train=one)


def test_single_training_sample_absolute_rule_works(good, tmp_path):
    one = save(tmp_path / "one.npz", good["arr"][:1])
    ok(run("classify", "--train", one, "--eval", good["eval"], "--rule", "absolute",
           "--delta-m", 0.1, "--delta-s", 0.1, "--out", good["out"]))
    _, arrays = read_out(good["out"])
    assert arrays["train_dist"].shape == (10, 1)


def test_bad_k_larger_than_training_set(good):
    classify_fails(good, "larger than the training set", "--k", 11)


def test_bad_k_zero(good):
    classify_fails(good, "k must be at least 1", "--k", 0)


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_bad_object_array_is_never_unpickled(good, tmp_path, suffix):
    sentinel = tmp_path / "UNPICKLED"

    class Trap:
        def __reduce__(self):
            return (open, (str(sentinel), "w"))

    arr = np.empty((3, 2), dtype=object)
    arr[:] = 1.0
    arr[0, 0] = Trap()
    path = tmp_path / f"evil{suffix}"
    if suffix == ".npy":
        np.save(path, arr, allow_pickle=True)
    else:
        np.savez(path, samples=arr)
    result = classify_fails(good, "pickle", train=path)
    assert "--train" in result.output
    assert not sentinel.exists(), "the file was unpickled"


def test_bad_npz_without_samples_key(good, tmp_path):
    two = tmp_path / "two.npz"
    np.savez(two, a=good["arr"], b=good["arr"])
    result = classify_fails(good, "no key 'samples'", eval_=two)
    assert "--eval" in result.output


def test_bad_random_bytes(good, tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(np.random.default_rng(0).bytes(512))
    result = classify_fails(good, "junk.npz", train=junk)
    assert "--train" in result.output


def test_bad_truncated_npz(good, tmp_path):
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good["train"].read_bytes()[:100])
    classify_fails(good, "cannot read", train=cut)


def test_bad_corrupt_compressed_npz(good, tmp_path):
    path = tmp_path / "comp.npz"
    np.savez_compressed(path, samples=np.random.default_rng(0).normal(size=(50, 16)))
    raw = bytearray(path.read_bytes())
    for i in range(100, 200):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))
    classify_fails(good, "cannot read", train=path)


def test_bad_random_bytes_message_does_not_claim_pickle(good, tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(np.random.default_rng(0).bytes(512))
    result = run("classify", "--train", junk, "--eval", good["eval"], "--out", good["out"])
    assert result.exit_code == 1
    assert "pickle" not in result.output.lower()


def test_bad_wrong_suffix(good, tmp_path):
    txt = tmp_path / "train.txt"
    txt.write_text("1 2 3\n")
    classify_fails(good, ".npz or .npy", train=txt)


def test_bad_missing_file(good, tmp_path):
    classify_fails(good, "no such file", eval_=tmp_path / "missing.npz")


def test_bad_missing_synth_file(good, tmp_path):
    result = classify_fails(good, "no such file", "--synth", tmp_path / "nope.npz")
    assert "--synth" in result.output


def test_bad_unknown_rule(good):
    classify_fails(good, "--rule", "--rule", "foo", usage=True)


def test_bad_unknown_option(good):
    classify_fails(good, "--foo", "--foo", usage=True)


def test_bad_missing_required_out(good):
    result = run("classify", "--train", good["train"], "--eval", good["eval"])
    assert_fails(result, "--out", None, good["root"], usage=True)


def test_bad_one_dimensional_array(good, tmp_path):
    classify_fails(good, "expected shape", train=save(tmp_path / "flat.npz", np.arange(8.0)))


def test_bad_string_array(good, tmp_path):
    classify_fails(good, "numeric", train=save(tmp_path / "str.npz", np.array([["a", "b"]])))


@pytest.mark.parametrize("budget", ["0", "-5", "nan"])
def test_bad_memory_budget(good, budget):
    classify_fails(good, "--memory-budget", f"--memory-budget={budget}")


@pytest.mark.parametrize("flag", ["--delta-m", "--delta-s"])
def test_bad_nonfinite_threshold(good, flag):
    classify_fails(good, "finite", flag, "nan")


def test_bad_out_is_foreign_folder(good):
    out = good["out"]
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    (out / "sub").mkdir()
    (out / "sub" / "x.bin").write_bytes(b"\x00\x01")
    before = sorted((str(p.relative_to(out)), p.is_file() and p.read_bytes())
                    for p in out.rglob("*"))
    result = run("classify", "--train", good["train"], "--eval", good["eval"], "--out", out)
    assert_fails(result, "memgen did not write", None, good["root"])
    after = sorted((str(p.relative_to(out)), p.is_file() and p.read_bytes())
                   for p in out.rglob("*"))
    assert after == before
    assert not (out / ".memgen").exists()


def test_bad_out_is_a_file(good):
    good["out"].write_text("a file")
    result = run("classify", "--train", good["train"], "--eval", good["eval"],
                 "--out", good["out"])
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit)
    assert good["out"].read_text() == "a file"


def test_failure_leaves_no_missing_parents(good, tmp_path):
    out = tmp_path / "new" / "deeper" / "out"
    result = run("classify", "--train", good["train"], "--eval", good["eval"], "--k", 99,
                 "--out", out)
    assert_fails(result, "larger than", out, tmp_path)
    assert not (tmp_path / "new").exists()


# ----------------------------------------------------------------------------- capacities

FRACTIONS = """K,memorized,spurious,generalized,n_eval
1000,0.5,0.3,0.2,1000
10,1.0,0.0,0.0,1000
100,0.95,0.03,0.02,1000
10000,0.02,0.05,0.93,1000
100000,0.0,0.02,0.98,1000
"""

NOT_REACHED = """K,memorized,spurious,generalized
10,0.6,0.1,0.3
100,0.4,0.3,0.3
1000,0.2,0.2,0.6
"""


def test_capacities_known_values(tmp_path):
    csv = tmp_path / "fractions.csv"
    csv.write_text(FRACTIONS)
    out = tmp_path / "caps.json"
    result = ok(run("capacities", csv, "--out", out, "--bootstrap", 200))
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("MC: K = 100") and lines[1].startswith("SC: K = 1000")
    assert lines[2].startswith("GC: K = 10000") and "not reached" not in result.output
    payload = json.loads(out.read_text())
    assert set(payload) == {"MC", "SC", "GC", "epsilon"}
    assert payload["epsilon"] == 0.1
    for name, value in (("MC", 100), ("SC", 1000), ("GC", 10000)):
        assert payload[name]["value"] == value
        lo, hi = payload[name]["ci95"]
        assert lo <= value <= hi
        assert 0 <= payload[name]["reached_share"] <= 1


def test_capacities_epsilon_changes_mc_and_gc(tmp_path):
    csv = tmp_path / "fractions.csv"
    csv.write_text(FRACTIONS)
    out = tmp_path / "caps.json"
    ok(run("capacities", csv, "--epsilon", 0.5, "--bootstrap", 10, "--out", out))
    payload = json.loads(out.read_text())
    assert (payload["MC"]["value"], payload["GC"]["value"]) == (1000, 10000)
    assert payload["epsilon"] == 0.5


def test_capacities_not_reached(tmp_path):
    csv = tmp_path / "fractions.csv"
    csv.write_text(NOT_REACHED)
    out = tmp_path / "caps.json"
    result = ok(run("capacities", csv, "--out", out))
    assert "MC: not reached" in result.output
    assert "GC: not reached" in result.output
    assert "SC: K = 100" in result.output
    payload = json.loads(out.read_text())
    assert payload["MC"]["value"] is None and payload["GC"]["value"] is None
    assert payload["SC"]["value"] == 100


def test_capacities_bad_table(tmp_path):
    csv = tmp_path / "bad.csv"
    csv.write_text("K,memorized,spurious\n10,1,0\n")
    result = run("capacities", csv)
    assert_fails(result, "generalized", None, tmp_path)
    result = run("capacities", tmp_path / "missing.csv")
    assert_fails(result, "no such file", None, tmp_path)


def test_capacities_out_in_missing_folder(tmp_path):
    csv = tmp_path / "fractions.csv"
    csv.write_text(FRACTIONS)
    result = run("capacities", csv, "--bootstrap", 10, "--out", tmp_path / "nodir" / "c.json")
    assert isinstance(result.exception, (SystemExit, type(None))), repr(result.exception)


# ----------------------------------------------------------------------------- plots


def test_plot_fractions_writes_png(tmp_path):
    csv = tmp_path / "fractions.csv"
    csv.write_text(FRACTIONS)
    out = tmp_path / "fractions.png"
    ok(run("plot", "fractions", csv, "--out", out))
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_plot_fractions_out_in_missing_folder(tmp_path):
    csv = tmp_path / "fractions.csv"
    csv.write_text(FRACTIONS)
    result = run("plot", "fractions", csv, "--out", tmp_path / "nodir" / "f.png")
    assert isinstance(result.exception, (SystemExit, type(None))), repr(result.exception)


def test_plot_neighbours_writes_png(tmp_path):
    rng = np.random.default_rng(4)
    train = rng.uniform(-1, 1, size=(12, 1, 8, 8)).astype(np.float32)
    eval_set = np.concatenate([train[:3] + 1e-3, rng.uniform(-1, 1, size=(6, 1, 8, 8))])
    train_path = save(tmp_path / "train.npz", train)
    eval_path = save(tmp_path / "eval.npz", eval_set.astype(np.float32))
    labels_dir = tmp_path / "run"
    ok(run("classify", "--train", train_path, "--eval", eval_path, "--k", 3, "--out", labels_dir))
    out = tmp_path / "neighbours.png"
    ok(run("plot", "neighbours", "--train", train_path, "--eval", eval_path,
           "--labels", labels_dir / "labels.npz", "--per-label", 2, "--out", out))
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_plot_neighbours_bad_inputs(tmp_path):
    rng = np.random.default_rng(5)
    flat_train = save(tmp_path / "train.npz", rng.normal(size=(8, 4)).astype(np.float32))
    flat_eval = save(tmp_path / "eval.npz", rng.normal(size=(6, 4)).astype(np.float32))
    run_dir = tmp_path / "run"
    ok(run("classify", "--train", flat_train, "--eval", flat_eval, "--out", run_dir))
    out = tmp_path / "n.png"
    result = run("plot", "neighbours", "--train", flat_train, "--eval", flat_eval,
                 "--labels", run_dir / "labels.npz", "--out", out)
    assert_fails(result, "image", out, tmp_path)
    other_eval = save(tmp_path / "eval7.npz", rng.normal(size=(7, 4)).astype(np.float32))
    result = run("plot", "neighbours", "--train", flat_train, "--eval", other_eval,
                 "--labels", run_dir / "labels.npz", "--out", out)
    assert_fails(result, "labels", out, tmp_path)
    result = run("plot", "neighbours", "--train", flat_train, "--eval", flat_eval,
                 "--labels", flat_train, "--out", out)
    assert_fails(result, "--labels", out, tmp_path)


# ----------------------------------------------------------------------------- entry points


def test_top_level_help_and_version():
    result = ok(run("--help"))
    for command in ("classify", "capacities", "plot"):
        assert command in result.output
    assert "0.1.0" in ok(run("--version")).output
    assert "--synth" in ok(run("classify", "-h")).output


def _subprocess_env():
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


def test_python_dash_m_help(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "memgen", "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env=_subprocess_env())
    assert proc.returncode == 0, proc.stderr
    assert "classify" in proc.stdout and "Usage" in proc.stdout


def test_console_script_help(tmp_path):
    script = Path(sys.executable).parent / "memgen"
    if not script.exists():
        pytest.skip("memgen console script not installed next to this interpreter")
    proc = subprocess.run([str(script), "--help"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env=_subprocess_env())
    assert proc.returncode == 0, proc.stderr
    assert "classify" in proc.stdout and "capacities" in proc.stdout


# ------------------------------------------------------------------ registry choices


def _all_commands(group, ctx):
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        yield from _all_commands(command, ctx) if isinstance(command, click.Group) else [command]


def test_choice_lists_are_read_from_their_registries():
    """Every --sampler, --data, --metric, --rule and --backend choice list is its registry,
    and so are the sweep config's; a newly registered name is offered everywhere."""
    from memgen.data import DATASETS
    from memgen.diffusion.samplers import SAMPLERS
    from memgen.experiments.config import CHOICES
    from memgen.experiments.phase import PHASE_DATA
    from memgen.metrics.features import FEATURE_MAPS
    from memgen.metrics.rules import RULES
    from memgen.neighbours import KNN_BACKENDS

    registries = {"sampler": SAMPLERS, "data": DATASETS, "metric": FEATURE_MAPS,
                  "rule": RULES, "backend": KNN_BACKENDS}
    seen = set()
    ctx = click.Context(cli)
    for command in _all_commands(cli, ctx):
        for param in command.params:
            if param.name in registries:
                allowed = PHASE_DATA if command.name == "phase" else registries[param.name]
                assert isinstance(param.type, click.Choice), (command.name, param.name)
                assert tuple(param.type.choices) == tuple(allowed), (command.name, param.name)
                seen.add(param.name)
    assert seen == set(registries)
    assert set(PHASE_DATA) <= set(DATASETS)
    assert CHOICES["sample.sampler"] == (None, *SAMPLERS)
    assert CHOICES["measure.metric"] == tuple(FEATURE_MAPS)
    assert CHOICES["measure.rule"] == tuple(RULES)
