"""What a new user's trial of the finished issue #23 found, each a case that now holds:
diagnose of a set whose errors are all 0, values beyond float32, k = 0, --input-range given
twice, and the duplicate warning that must not count exact copies (eq. 4 calls them
memorized: 0 / ε)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_cli import assert_fails, ok, run, save

import memgen
from memgen.errors import UserError


def test_diagnose_of_a_constant_training_set_writes_its_zero_errors(tmp_path):
    """Every error is 0: the figure takes a linear axis (it was an internal error, exit 70,
    from a log axis with nothing positive on it)."""
    save(tmp_path / "c.npz", np.zeros((20, 1, 8, 8), np.float32))
    ok(run("diagnose", "--no-progress", "--exact", tmp_path / "c.npz", "--n", 4, "--levels", 2,
           "--out", tmp_path / "d"))
    rows = np.genfromtxt(tmp_path / "d" / "diagnose.csv", delimiter=",", names=True)
    assert (rows["rms_vs_exact"] == 0).all()
    assert (tmp_path / "d" / "diagnose.png").stat().st_size > 0


def test_values_beyond_float32_are_named_as_such_not_as_nan(tmp_path):
    huge = np.random.default_rng(0).normal(size=(10, 4)) * 1e100
    out = tmp_path / "out"
    result = run("classify", "--train", save(tmp_path / "h.npz", huge), "--eval",
                 tmp_path / "h.npz", "--out", out)
    assert_fails(result, "exceed float32's range", out, tmp_path)
    assert "NaN" not in result.output


def test_k_zero_asks_for_at_least_one_neighbour():
    x = np.random.default_rng(1).normal(size=(5, 3)).astype(np.float32)
    with pytest.raises(UserError, match="at least 1 neighbour"):
        memgen.knn(x, x, k=0)


@pytest.mark.parametrize("given, phrase", [(["0,1", "0,2"], "LO,HI given twice"),
                                           (["train=0,1", "train=0,2"], "train=LO,HI given")])
def test_input_range_twice_says_which(tmp_path, given, phrase):
    x = np.random.default_rng(2).normal(size=(6, 3)).astype(np.float32)
    save(tmp_path / "x.npz", x)
    flags = [a for g in given for a in ("--input-range", g)]
    out = tmp_path / "out"
    assert_fails(run("classify", "--train", tmp_path / "x.npz", "--eval", tmp_path / "x.npz",
                     *flags, "--out", out), phrase, out, tmp_path)


def test_duplicate_warning_counts_only_copies_eq4_cannot_call_memorized(tmp_path):
    """Training images 0..2 repeated exactly, evaluated samples their exact copies (d1 = d2
    = 0: memorized) and one near-copy of image 0 (d1 ≈ d2 > 0: hidden from eq. 4)."""
    rng = np.random.default_rng(3)
    train = rng.normal(size=(20, 8)).astype(np.float32)
    train = np.concatenate([train, train[:3]])
    eval_set = np.concatenate([train[:3], train[:1] + 1e-3, rng.normal(size=(6, 8))])
    out = tmp_path / "out"
    result = ok(run("classify", "--train", save(tmp_path / "t.npz", train), "--eval",
                    save(tmp_path / "e.npz", eval_set.astype(np.float32)), "--out", out))
    with np.load(out / "labels.npz") as labels:
        assert (labels["labels"][:3] == 0).all() and labels["labels"][3] != 0
    warning = json.loads((out / "summary.json").read_text())["warnings"][0]
    assert "for 1 evaluated samples the two nearest training images" in warning, warning
