"""Bad inputs refused before any work, with one line naming what is wrong (issue #12).

A catalogue: thresholds and sets for classify (item 6), sweep configs (item 13), fraction
tables for capacities (item 13), label files for plot neighbours (item 12). Each case is
one distinct bad input; every one exits 1 with a single ``Error:`` line containing the
phrase, and leaves no output behind. tests/test_cli.py, tests/test_cli_safety.py and
tests/test_measure_correctness.py hold the rest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_cli import assert_fails, run, save

TINY = Path(__file__).parents[1] / "configs" / "tiny.yaml"
D = 4


@pytest.fixture
def sets(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(12, D)).astype(np.float32)
    return {"train": save(tmp_path / "train.npz", arr), "eval": save(tmp_path / "eval.npz", arr),
            "heldout": save(tmp_path / "heldout.npz", rng.normal(size=(40, D))),
            "arr": arr, "root": tmp_path, "out": tmp_path / "out"}


# ------------------------------------------------------------- classify: thresholds, sets

CLASSIFY_OPTIONS = {  # id: (extra options, phrase of the error)
    "paper-delta-m-negative": (["--delta-m", "-1"], "strictly between 0 and 1"),
    "paper-delta-m-zero": (["--delta-m", "0"], "strictly between 0 and 1"),
    "paper-delta-m-one": (["--delta-m", "1"], "strictly between 0 and 1"),
    "paper-delta-s-1.5": (["--delta-s", "1.5"], "delta_s = 1.5"),
    "paper-delta-s-negative": (["--delta-s", "-0.2"], "delta_s"),
    "paper-delta-m-inf": (["--delta-m", "inf"], "finite"),
    "absolute-negative": (["--rule", "absolute", "--delta-m", "-0.1", "--delta-s", "0.1"],
                          "cannot be negative"),
    "absolute-l2-no-thresholds": (["--rule", "absolute"], "give both delta_m and delta_s"),
    "absolute-l2-one-threshold": (["--rule", "absolute", "--delta-s", "0.1"], "give both"),
    "alpha-above-one": (["--alpha", "1.5"], "--alpha"),
    "alpha-negative": (["--alpha", "-0.1"], "--alpha"),
    "calibrate-without-heldout": (["--calibrate"], "--heldout"),
    "k-zero": (["--k", "0"], "k must be at least 1"),
    "k-above-train": (["--k", "50"], "larger than the training set"),
    "memory-budget-inf": (["--memory-budget", "inf"], "--memory-budget"),
    "paper-rule-k-1": (["--k", "1"], "k must be at least 2"),
}


@pytest.mark.parametrize("case", sorted(CLASSIFY_OPTIONS))
def test_classify_refuses_bad_options(sets, case):
    extra, phrase = CLASSIFY_OPTIONS[case]
    result = run("classify", "--train", sets["train"], "--eval", sets["eval"], *extra,
                 "--out", sets["out"])
    assert_fails(result, phrase, sets["out"], sets["root"])


BAD_ARRAYS = {  # id: (array, phrase)
    "complex": (np.ones((12, D), np.complex64), "real numbers"),
    "no-features": (np.zeros((12, 0), np.float32), "no features"),
    "no-channels": (np.zeros((12, 0, 4, 4), np.float32), "no features"),
    "nan": (np.full((12, D), np.nan, np.float32), "NaN"),
    "inf": (np.full((12, D), np.inf, np.float32), "Inf"),
    "empty": (np.zeros((0, D), np.float32), "empty"),
    "bytes": (np.array([[b"ab", b"cd"]]), "numeric"),
}


@pytest.mark.parametrize("which", ["train", "eval", "heldout", "synth"])
@pytest.mark.parametrize("case", sorted(BAD_ARRAYS))
def test_classify_refuses_bad_arrays_in_every_set(sets, case, which):
    array, phrase = BAD_ARRAYS[case]
    bad = save(sets["root"] / f"bad-{which}.npz", array)
    paths = {"train": sets["train"], "eval": sets["eval"]}
    extra = []
    if which in paths:
        paths[which] = bad
    else:
        extra = [f"--{which}", bad]
    result = run("classify", "--train", paths["train"], "--eval", paths["eval"], *extra,
                 "--out", sets["out"])
    assert_fails(result, phrase, sets["out"], sets["root"])
    assert f"--{which}" in result.output


@pytest.mark.parametrize("case", ["complex", "no-features"])
def test_streamed_synthetic_shards_are_checked_too(sets, case):
    folder = sets["root"] / "shards"
    folder.mkdir()
    np.save(folder / "s-0000.npy", BAD_ARRAYS[case][0])
    result = run("classify", "--train", sets["train"], "--eval", sets["eval"], "--synth", folder,
                 "--out", sets["out"])
    assert_fails(result, BAD_ARRAYS[case][1], sets["out"], sets["root"])


# ------------------------------------------------------------------- sweep configs

CONFIG_OVERRIDES = {  # id: (--set overrides, the field the error must name)
    "alpha-5": (["measure.alpha=5"], "measure.alpha"),
    "epsilon-2": (["measure.epsilon=2"], "measure.epsilon"),
    "epsilon-0": (["measure.epsilon=0"], "measure.epsilon"),
    "lr-negative": (["train.lr=-1"], "train.lr"),
    "lr-zero": (["train.lr=0"], "train.lr"),
    "unknown-preset": (["model.kind=network", "model.preset=nope"], "model.preset"),
    "cuda-without-gpu": (["device=cuda"], "device"),
    "device-tpu": (["device=tpu"], "device"),
    "device-cpu-index": (["device=cpu:1"], "device"),
    "delta-m-negative": (["measure.delta_m=-1"], "delta_m"),
    "delta-s-1.5": (["measure.delta_s=1.5"], "delta_s"),
    "absolute-l2-no-thresholds": (["measure.rule=absolute"], "measure"),
    "ema-decay-one": (["train.ema_decay=1"], "train.ema_decay"),
    "ema-decay-negative": (["train.ema_decay=-0.1"], "train.ema_decay"),
    "grad-clip-zero": (["train.grad_clip=0"], "train.grad_clip"),
    "eta-2": (["sample.eta=2"], "sample.eta"),
    "steps-0": (["sample.steps=0"], "sample.steps"),
    "k-0": (["measure.k=0"], "measure.k"),
    "min-synth-negative": (["sample.min_synth=-1"], "sample.min_synth"),
    "analysis-p-1.5": (["analysis.p=1.5"], "analysis.p"),
    "sigma-hi-below-lo": (["analysis.sigma_hi=0.1"], "analysis.sigma_hi"),
    "analysis-delta-0": (["analysis.delta=0"], "analysis.delta"),
    "Ks-empty": (["Ks=[]"], "Ks"),
    "Ks-one": (["Ks=[1]"], "Ks"),
    "Ks-repeated": (["Ks=[2, 2]"], "Ks"),
    "iterations-0": (["train.iterations=0"], "train.iterations"),
    "unknown-key": (["measure.foo=1"], "measure.foo"),
    "wrong-type": (["train.iterations=many"], "train.iterations"),
    "prior-unknown": (["sample.prior=weird"], "sample.prior"),
    "clip-range-reversed": (["sample.clip_range=[1, -1]"], "sample.clip_range"),
    "unknown-metric": (["measure.metric=cosine"], "measure.metric"),
    "snapshot-0": (["train.snapshots=[0]"], "train.snapshots"),
    "bootstrap-0": (["measure.bootstrap=0"], "measure.bootstrap"),
    "seed-negative": (["measure.seed=-1"], "measure.seed"),
    "split-seed-negative": (["data.split_seed=-5"], "data.split_seed"),
    "eta-above-1": (["sample.eta=1.5"], "sample.eta"),
    "paper-rule-k-1": (["measure.k=1"], "measure.k"),
    "k-above-smallest-K": (["measure.k=5", "Ks=[2, 9]"], "measure.k"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_OVERRIDES))
def test_sweep_dry_run_refuses_bad_config_values(tmp_path, case):
    if case == "cuda-without-gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    overrides, field = CONFIG_OVERRIDES[case]
    args = [a for item in overrides for a in ("--set", item)]
    out = tmp_path / "run"
    result = run("sweep", TINY, "--out", out, "--dry-run", *args)
    assert_fails(result, field, out, tmp_path)


def test_sweep_accepts_ddims_eta_of_one(tmp_path):
    result = run("sweep", TINY, "--out", tmp_path / "run", "--dry-run", "--set", "sample.eta=1",
                 "--set", "sample.sampler=ddim")  # η is DDIM's (issue #23: else refused)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("seed", ["-1", "-100"])
def test_negative_seeds_are_usage_errors(sets, seed):
    result = run("classify", "--train", sets["train"], "--eval", sets["eval"], "--seed", seed,
                 "--out", sets["out"])
    assert_fails(result, "--seed", sets["out"], sets["root"], usage=True)


@pytest.mark.parametrize("text, phrase", [
    ("", "empty"), ("# only a comment\n", "empty"), ("- 1\n- 2\n", "mapping"),
    ("Ks: [2, 9\n", "not valid YAML"),
], ids=["empty", "comment-only", "list", "broken-yaml"])
def test_sweep_refuses_bad_config_files(tmp_path, text, phrase):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    result = run("sweep", path, "--out", tmp_path / "run", "--dry-run")
    assert_fails(result, phrase, tmp_path / "run", tmp_path)


# ------------------------------------------------------------------ capacities tables

HEADER = "K,memorized,spurious,generalized,n_eval"
TABLES = {  # id: (rows after the header, phrase)
    "ragged-short": (["2,1,0,0,100", "9,0.5,0.5"], "line 3"),
    "ragged-long": (["2,1,0,0,100,7"], "line 2"),
    "sum-2.7": (["2,0.9,0.9,0.9,100"], "sum to 2.7"),
    "K-zero": (["0,1,0,0,100"], "at least 1"),
    "K-negative": (["-3,1,0,0,100"], "at least 1"),
    "K-fractional": (["2.7,1,0,0,100"], "whole number"),
    "K-repeated": (["2,1,0,0,100", "2,1,0,0,100"], "only once"),
    "fraction-above-one": (["2,1.5,-0.5,0,100"], "[0, 1]"),
    "non-numeric": (["2,one,0,0,100"], "non-numeric"),
    "n-eval-zero": (["2,1,0,0,0"], "n_eval"),
    "no-rows": ([], "no rows"),
}


@pytest.mark.parametrize("case", sorted(TABLES))
def test_capacities_refuses_impossible_tables(tmp_path, case):
    rows, phrase = TABLES[case]
    csv = tmp_path / "fractions.csv"
    csv.write_text("\n".join([HEADER, *rows]) + "\n")
    result = run("capacities", csv, "--out", tmp_path / "caps.json")
    assert_fails(result, phrase, tmp_path / "caps.json", tmp_path)


def test_capacities_refuses_missing_columns_and_intervals_that_miss(tmp_path):
    csv = tmp_path / "fractions.csv"
    csv.write_text("K,memorized,spurious\n2,1,0\n")
    assert_fails(run("capacities", csv), "lacks the column(s) generalized", None, tmp_path)
    csv.write_text("K,memorized,memorized_lo,memorized_hi,spurious,spurious_lo,spurious_hi,"
                   "generalized,generalized_lo,generalized_hi\n2,0.5,0.6,0.7,0,0,0.1,0.5,0.4,0.6\n")
    assert_fails(run("capacities", csv), "contain its fraction", None, tmp_path)


@pytest.mark.parametrize("flags, phrase", [
    (["--epsilon", "0"], "--epsilon"), (["--epsilon", "1.5"], "--epsilon"),
    (["--bootstrap", "0"], "--bootstrap"),
], ids=["epsilon-0", "epsilon-1.5", "bootstrap-0"])
def test_capacities_refuses_bad_options(tmp_path, flags, phrase):
    csv = tmp_path / "fractions.csv"
    csv.write_text(HEADER + "\n2,1,0,0,100\n")
    assert_fails(run("capacities", csv, *flags), phrase, None, tmp_path)


# ------------------------------------------------------------------ plot neighbours

def _labels_file(path, n, **changes):
    arrays = {"labels": np.zeros(n, np.int8), "train_dist": np.ones((n, 2)),
              "train_idx": np.zeros((n, 2), np.int64), "synth_dist": np.ones((n, 2)),
              "synth_idx": np.ones((n, 2), np.int64)}
    arrays.update(changes)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


LABEL_FILES = {  # id: (changes to a good labels.npz, phrase)
    "missing-key": ({"synth_idx": None}, "lacks synth_idx"),
    "train-index-out-of-range": ({"train_idx": np.full((12, 2), 99)}, "points past"),
    "negative-synth-index": ({"synth_idx": np.full((12, 2), -1)}, "points past"),
    "wrong-count": ({"labels": np.zeros(5, np.int8)}, "holds 5 labels"),
    "label-value-5": ({"labels": np.full(12, 5, np.int8)}, "labels must be 0"),
    "ragged-neighbours": ({"train_dist": np.ones((12, 3))}, "must be (12, k)"),
}


@pytest.mark.parametrize("case", sorted(LABEL_FILES))
def test_plot_neighbours_refuses_bad_label_files(sets, case):
    changes, phrase = LABEL_FILES[case]
    labels = _labels_file(sets["root"] / "labels.npz", 12, **changes)
    out = sets["root"] / "grid.png"
    result = run("plot", "neighbours", "--train", sets["train"], "--eval", sets["eval"],
                 "--labels", labels, "--out", out)
    assert_fails(result, phrase, out, sets["root"])


@pytest.mark.parametrize("flags, phrase", [
    (["--per-label", "0"], "--per-label"), (["--out-suffix", ".txt"], "image file"),
], ids=["per-label-0", "not-an-image"])
def test_plot_neighbours_refuses_bad_options(sets, flags, phrase):
    labels = _labels_file(sets["root"] / "labels.npz", 12)
    out = sets["root"] / ("grid.txt" if "--out-suffix" in flags else "grid.png")
    flags = [f for f in flags if f not in ("--out-suffix", ".txt")]
    result = run("plot", "neighbours", "--train", sets["train"], "--eval", sets["eval"],
                 "--labels", labels, *flags, "--out", out)
    assert_fails(result, phrase, out, sets["root"])


def count_bad_inputs() -> int:
    """The distinct bad inputs of this file (the closing note of #12 reports the total)."""
    return (len(CLASSIFY_OPTIONS) + len(BAD_ARRAYS) * 4 + 2 + len(CONFIG_OVERRIDES) + 4
            + len(TABLES) + 2 + 3 + len(LABEL_FILES) + 2 + 2)


def test_the_catalogue_is_large():
    assert count_bad_inputs() >= 60
