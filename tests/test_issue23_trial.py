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


TRAIN = ["train", "--data", "digits", "--preset", "digits-8", "--batch-size", "8",
         "--iterations", "2"]


def test_retraining_a_run_on_another_training_set_is_refused_then_starts_afresh(tmp_path):
    """Resuming would finish the K = 16 model on K = 32 data (it printed 'trained on 32
    samples' over the K = 16 weights); refused, and --overwrite trains afresh."""
    pytest.importorskip("sklearn")
    import torch

    out = tmp_path / "run"
    ok(run(*TRAIN, "--K", 16, "--out", out))
    before = (out / "checkpoint.pt").read_bytes()
    result = run(*TRAIN, "--K", 32, "--out", out)
    assert_fails(result, "another training set (16 samples", None, tmp_path)
    assert (out / "checkpoint.pt").read_bytes() == before
    ok(run(*TRAIN, "--K", 32, "--overwrite", "--out", out))
    ok(run(*TRAIN, "--K", 32, "--out", tmp_path / "fresh"))
    with np.load(out / "train.npz") as z:
        assert len(z["samples"]) == 32
    mine, fresh = (torch.load(f / "checkpoint.pt", weights_only=True)["model"]
                   for f in (out, tmp_path / "fresh"))
    assert all(torch.equal(mine[k], fresh[k]) for k in fresh)  # the K = 32 model, afresh
    ok(run(*TRAIN, "--K", 32, "--iterations", 3, "--out", out))  # same data: resumes


def test_a_diverging_run_stops_with_a_user_error(tmp_path):
    pytest.importorskip("sklearn")
    out = tmp_path / "run"
    assert_fails(run(*TRAIN, "--K", 8, "--lr", "inf", "--out", out), "lr < inf", out, tmp_path)
    result = run(*TRAIN[:-1], "20", "--K", 8, "--lr", "1e30", "--out", out)
    assert result.exit_code == 1 and "diverged" in result.output, result.output


def test_amp_without_cuda_is_refused(tmp_path):
    pytest.importorskip("sklearn")
    out = tmp_path / "run"
    assert_fails(run(*TRAIN, "--K", 8, "--amp", "--out", out), "--amp", out, tmp_path)


@pytest.mark.parametrize("tol", ["nan", "inf"])
def test_phase_refuses_a_tolerance_that_is_not_finite(tmp_path, tol):
    out = tmp_path / "p"
    assert_fails(run("phase", "--sigma", 0.1, "--K", 2, "--tol", tol, "--out", out),
                 "finite tolerance", out, tmp_path)


def test_sweep_refuses_eval_and_synth_drawn_from_one_seed():
    from pathlib import Path

    from memgen.experiments.config import load_config

    tiny = Path(__file__).parents[1] / "configs" / "tiny.yaml"
    with pytest.raises(UserError, match="both 2"):
        load_config(tiny, ["sample.eval_seed=2", "sample.synth_seed=2"])


def test_reference_layout_is_per_set_and_goes_with_overwrite(tmp_path):
    x = np.random.default_rng(4).uniform(-1, 1, (6, 1, 4, 4)).astype(np.float32)
    save(tmp_path / "t.npz", x)
    common = ["generate", "--exact", tmp_path / "t.npz", "--steps", 5, "--sampler", "ddim",
              "--out", tmp_path / "g"]
    ok(run(*common, "--reference-layout", 5, "--n", 8, "--name", "eval"))
    ok(run(*common, "--reference-layout", 5, "--n", 4, "--name", "synth"))
    ref = tmp_path / "g" / "reference"
    for name, n in (("eval", 8), ("synth", 4)):
        with np.load(ref / name / "5.npz") as z, np.load(tmp_path / "g" / f"{name}.npz") as s:
            assert len(z["samples"]) == n
            np.testing.assert_array_equal(z["samples"], s["samples"])
    ok(run(*common, "--n", 3, "--name", "eval", "--overwrite"))
    assert not (ref / "eval").exists()  # the old copy went with the set it copied


def test_a_sweep_stage_redraws_shards_of_an_earlier_memgen(tmp_path):
    """A stage interrupted under an earlier memgen holds shards without records: its cache
    key fixes the model and settings, so they are drawn again (the same samples), not
    refused with advice a sweep cannot follow."""
    from pathlib import Path

    tiny = Path(__file__).parents[1] / "configs" / "tiny.yaml"
    run_dir = tmp_path / "run"
    ok(run("-q", "sweep", tiny, "--out", run_dir))
    stage = sorted((run_dir / "cache").glob("eval-*"))[0]
    before = np.load(stage / "eval.npz")["samples"]
    (stage / "DONE.json").unlink()
    (stage / "eval.npz").unlink()
    for record in stage.glob("eval-*.json"):
        record.unlink()  # as an earlier memgen left them
    ok(run("-q", "sweep", tiny, "--out", run_dir))
    np.testing.assert_array_equal(np.load(stage / "eval.npz")["samples"], before)
    assert sorted(stage.glob("eval-*.json"))  # drawn again, with their records


@pytest.mark.parametrize("overrides, phrase", [
    (["sample.steps=1"], "a VE ladder needs at least 2 steps"),
    (["model.kind=network", "model.preset=toy-mlp", "data.name=digits"],
     "data.name = digits: the data are 1×8×8 images but preset toy-mlp takes "
     "2-dimensional vectors (presets that fit: digits-8, "
     "digits-8-w8, digits-8-w64)"),
    (["model.kind=network", "model.preset=digits-8"],
     "the data are 2-dimensional vectors but preset digits-8 takes 1×8×8 images"),
])
def test_sweep_dry_run_refuses_what_the_run_would(tmp_path, overrides, phrase):
    """--dry-run passed these, and the run then failed inside a stage (a VE ladder of one
    step; a vector network given 28×28 digits, an image network given circle points)."""
    pytest.importorskip("sklearn")
    from pathlib import Path

    tiny = Path(__file__).parents[1] / "configs" / "tiny.yaml"
    sets = [a for o in overrides for a in ("--set", o)]
    out = tmp_path / "run"
    assert_fails(run("sweep", tiny, *sets, "--dry-run", "--out", out), phrase, out, tmp_path)
