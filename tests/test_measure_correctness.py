"""Labels and null rates that are right or refused (issue #12, items 4–6), through the CLI.

Each case is planted so that the right answer is known and the old behaviour was wrong:
duplicated training images hid copies from eq. 4, the null rates printed with calibrated
thresholds were those of the default thresholds, held-out data overlapping the training
set calibrated δ_m below zero, and the ratio rule's ε decided the labels of tiny data.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_cli import assert_fails, run, save

from memgen.metrics.null import null_sizes
from memgen.metrics.rules import GENERALIZED, MEMORIZED, make_rule

D = 20


def _duplicated_training_set(tmp_path):
    """50 training points with point 0 repeated (index 1), and 20 near-copies of point 0."""
    rng = np.random.default_rng(0)
    train = rng.normal(size=(50, D)).astype(np.float32)
    train[1] = train[0]
    copies = (train[0] + 0.01 * rng.normal(size=(20, D))).astype(np.float32)
    novel = rng.normal(size=(20, D)).astype(np.float32)
    return {"train": save(tmp_path / "train.npz", train),
            "eval": save(tmp_path / "eval.npz", np.concatenate([copies, novel])),
            "heldout": save(tmp_path / "heldout.npz", rng.normal(size=(300, D)).astype(np.float32))}


def _labels(out):
    with np.load(out / "labels.npz", allow_pickle=False) as archive:
        return archive["labels"], archive["train_idx"]


def test_duplicated_training_image_warns_and_dedup_calls_its_copies_memorized(tmp_path):
    p = _duplicated_training_set(tmp_path)
    plain = run("classify", "--train", p["train"], "--eval", p["eval"], "--out", tmp_path / "a")
    assert plain.exit_code == 0, plain.output
    labels, _ = _labels(tmp_path / "a")
    # eq. 4 as written: d1 = d2 for every copy, so none of the 20 is memorized ...
    assert (labels[:20] != MEMORIZED).all()
    # ... and memgen says why, with the count
    assert "warning: 1 training sample repeats another exactly" in plain.output
    assert "for 20 evaluated samples the two nearest training images are near-duplicates" \
        in plain.output
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["warnings"] and summary["config"]["dedup"] is False

    dedup = run("classify", "--train", p["train"], "--eval", p["eval"], "--dedup",
                "--out", tmp_path / "b")
    assert dedup.exit_code == 0, dedup.output
    labels, idx = _labels(tmp_path / "b")
    assert (labels[:20] == MEMORIZED).all()
    assert (labels[20:] != MEMORIZED).all()  # novel points are unaffected
    # the second training neighbour of a copy is no longer the duplicate of the first
    assert not np.isin(idx[:20, 1], [0, 1]).any()


def test_dedup_changes_nothing_without_duplicates(tmp_path):
    rng = np.random.default_rng(1)
    train = save(tmp_path / "t.npz", rng.normal(size=(60, D)).astype(np.float32))
    evals = save(tmp_path / "e.npz", rng.normal(size=(40, D)).astype(np.float32))
    for name, extra in (("a", []), ("b", ["--dedup"])):
        result = run("classify", "--train", train, "--eval", evals, *extra,
                     "--out", tmp_path / name)
        assert result.exit_code == 0 and "warning" not in result.output, result.output
    (la, ia), (lb, ib) = _labels(tmp_path / "a"), _labels(tmp_path / "b")
    np.testing.assert_array_equal(la, lb)
    np.testing.assert_array_equal(ia, ib)


def test_heldout_overlapping_the_training_set_is_refused(tmp_path):
    p = _duplicated_training_set(tmp_path)
    result = run("classify", "--train", p["train"], "--eval", p["eval"], "--heldout",
                 p["train"], "--calibrate", "--out", tmp_path / "out")
    assert_fails(result, "50 of the 50 held-out samples are also in the training set",
                 tmp_path / "out", tmp_path)


def test_calibrated_null_rates_are_those_of_the_thresholds_used(tmp_path):
    """The null-rate column equals a brute-force recount of the null sets at the
    calibrated thresholds (not the rates at the default ones)."""
    rng = np.random.default_rng(2)
    pool = rng.normal(size=(700, 3)).astype(np.float32)  # low dimension: spurious null > 0
    train, heldout, evals = pool[:100], pool[100:600], pool[600:]
    paths = {n: save(tmp_path / f"{n}.npz", a) for n, a in
             (("train", train), ("heldout", heldout), ("eval", evals))}
    out = tmp_path / "out"
    result = run("classify", "--train", paths["train"], "--eval", paths["eval"], "--heldout",
                 paths["heldout"], "--calibrate", "--alpha", 0.02, "--seed", 4, "--out", out)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    null = summary["null"]
    assert null["thresholds"] == "calibrated"

    # brute force: the same null sets (seeded permutation), labelled by numpy at δ used
    e, _ = null_sizes(len(heldout), len(evals), None)
    order = np.random.default_rng(4).permutation(len(heldout))
    x = heldout[order[:e]].astype(np.float64)
    dt = np.sort(np.linalg.norm(x[:, None] - train[None].astype(np.float64), axis=-1), axis=1)
    ds = np.linalg.norm(x[:, None] - x[None], axis=-1)
    np.fill_diagonal(ds, np.inf)
    s1 = ds.min(axis=1)
    mem = dt[:, 0] / (dt[:, 1] + 1e-6) <= summary["delta_m"]
    spur = (s1 / (dt[:, 0] + s1 + 1e-6) <= summary["delta_s"]) & ~mem
    recount = {"memorized": mem.mean(), "spurious": spur.mean(),
               "generalized": 1 - mem.mean() - spur.mean()}
    for name, value in recount.items():
        assert null["fractions"][name] == pytest.approx(value, abs=1e-12), name
    # the rates at the given (default) thresholds are kept beside, and differ here
    default = null["given_thresholds"]["fractions"]
    assert default != null["fractions"]
    assert recount["spurious"] <= 0.02 + 1e-12  # what calibration promised
    # and the printed column is the calibrated one
    line = next(l for l in result.output.splitlines() if l.startswith("spurious"))
    assert line.split()[-1] == f"{null['fractions']['spurious']:.4f}"
    assert "null rates at the calibrated thresholds" in result.output


def test_tiny_data_is_refused_rather_than_labelled_by_epsilon(tmp_path):
    rng = np.random.default_rng(3)
    train = save(tmp_path / "t.npz", (1e-30 * rng.normal(size=(40, 8))).astype(np.float64))
    evals = save(tmp_path / "e.npz", (1e-30 * rng.normal(size=(30, 8))).astype(np.float64))
    result = run("classify", "--train", train, "--eval", evals, "--out", tmp_path / "out")
    assert_fails(result, "too small for the ratio rule", tmp_path / "out", tmp_path)


def test_scaling_the_data_does_not_change_the_labels(tmp_path):
    rng = np.random.default_rng(4)
    train, evals = rng.normal(size=(40, 8)), rng.normal(size=(30, 8))
    labels = []
    for scale in (1.0, 1e-2, 1e3):
        t = save(tmp_path / f"t{scale}.npz", (scale * train).astype(np.float32))
        e = save(tmp_path / f"e{scale}.npz", (scale * evals).astype(np.float32))
        out = tmp_path / f"out{scale}"
        assert run("classify", "--train", t, "--eval", e, "--out", out).exit_code == 0
        labels.append(_labels(out)[0])
    for other in labels[1:]:
        np.testing.assert_array_equal(labels[0], other)


def test_absolute_rule_defaults_only_for_the_metric_that_published_them():
    assert make_rule("absolute", metric="lpips-alex-ref").delta_m == 0.03
    with pytest.raises(ValueError, match="give both delta_m and delta_s"):
        make_rule("absolute", metric="l2")
    # with explicit thresholds in the metric's units, l2 planted copies are memorized
    rule = make_rule("absolute", 0.05, 0.01, metric="l2")
    from memgen.metrics.rules import apply_rule

    labels = apply_rule(np.array([[0.01, 3.0], [2.0, 3.0]]), np.array([[1.0], [1.0]]), rule)
    np.testing.assert_array_equal(labels, [MEMORIZED, GENERALIZED])


def test_a_null_run_short_of_held_out_data_is_said_beside_the_null_rates(tmp_path):
    """digits (1,797 images) at K = 512 leave 1,285 held-out images for a null run that
    would need 100 + 2,048: the CLI table and the report say so, not only summary.json."""
    config = tmp_path / "digits.yaml"
    config.write_text("name: short null\nKs: [512]\ndata: {name: digits}\n"
                      "model: {kind: exact, schedule: ve}\n"
                      "sample: {steps: 20, n_eval: 100, synth_multiplier: 4}\n"
                      "measure: {bootstrap: 20}\n")
    out = tmp_path / "run"
    result = run("sweep", config, "--out", out)
    assert result.exit_code == 0, result.output
    row = next(l for l in result.output.splitlines() if l.strip().startswith("512"))
    assert "*" in row
    assert "* held-out data too small for the null run" in result.output
    summary = next((out / "cache").glob("classify-*/summary.json"))
    null = json.loads(summary.read_text())["null"]
    assert null["n_synth"] < 2048
    assert f"{null['n_eval']}/{null['n_synth']} instead of 100/2048" in result.output
    report = (out / "report.html").read_text()
    assert "Null run smaller than the measured sets" in report
