"""Issue #23, items 5 and 9: headlines carry their quality (capacities, hygiene halves,
diagnose), and the Python API as a scientist uses it in a notebook."""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from test_cli import assert_fails, ok, run, save

import memgen
from memgen.metrics.capacity import FractionTable, capacities, read_fraction_table
from memgen.metrics.rules import LABEL_NAMES

ROOT = Path(__file__).parents[1]

# ------------------------------------------------------------ 1. capacities and quality

# The main job's fractions (docs/RESULTS.md, images-cpu): K, memorized, spurious,
# generalized, precision of the memorized and generalized samples, held-out precision.
MAIN_JOB = [(2, 1.000, 0.000, 0.000, 1.000, None, 0.970),
            (8, 1.000, 0.000, 0.000, 1.000, None, 0.975),
            (32, 0.910, 0.000, 0.090, 1.000, 1.000, 0.985),
            (64, 0.415, 0.010, 0.575, 1.000, 1.000, 0.965),
            (128, 0.010, 0.000, 0.990, 1.000, 0.950, 0.965),
            (256, 0.000, 0.000, 1.000, None, 0.995, 0.960)]


def _write_table(path: Path, rows) -> Path:
    """A fractions.csv with n_eval = 200 and the precision columns."""
    def cell(v):
        return "" if v is None else v

    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["K", *LABEL_NAMES, "n_eval", *(f"precision_{n}" for n in LABEL_NAMES),
                         "baseline_precision"])
        for K, m, s, g, pm, pg, base in rows:
            writer.writerow([K, m, s, g, 200, cell(pm), "", cell(pg), base])
    return path


def test_main_job_keeps_its_capacities_with_the_quality_gate(tmp_path):
    table = _write_table(tmp_path / "fractions.csv", MAIN_JOB)
    result = ok(run("capacities", table, "--bootstrap", 200, "--out", tmp_path / "caps.json"))
    lines = result.output.splitlines()
    assert lines[0].startswith("MC: K = 32 (") and lines[2].startswith("GC: K = 128 (")
    caps = json.loads((tmp_path / "caps.json").read_text())
    assert caps["GC"]["value"] == 128 and caps["GC"]["off_data"] == []


def test_capacities_cli_refuses_a_gc_whose_samples_are_off_the_data(tmp_path):
    # the same table, but the generalized samples at K = 128 are noise: GC moves to 256
    rows = [r if r[0] != 128 else (*r[:5], 0.30, r[6]) for r in MAIN_JOB]
    table = _write_table(tmp_path / "fractions.csv", rows)
    gc = ok(run("capacities", table, "--bootstrap", 200)).output.splitlines()[2]
    assert gc.startswith("GC: K = 256 (")
    assert ("at K = 128 the generalized samples have precision 0.30 against 0.96 for "
            "held-out data: not counted") in gc
    # and where every K that reaches it is off the data: not reached, and why
    rows = [(*r[:5], None if r[5] is None else 0.01, r[6]) for r in MAIN_JOB]
    table = _write_table(tmp_path / "noise.csv", rows)
    result = ok(run("capacities", table, "--bootstrap", 200, "--out", tmp_path / "caps.json"))
    gc = result.output.splitlines()[2]
    assert gc.startswith("GC: not reached — at K = 128 the generalized samples have precision "
                         "0.01 against 0.96 for held-out data (reached in 0% of resamples)")
    caps = json.loads((tmp_path / "caps.json").read_text())
    assert caps["GC"]["value"] is None and caps["GC"]["reason"].startswith("not reached — ")
    assert [o["K"] for o in caps["GC"]["off_data"]] == [128, 256]
    assert caps["GC"]["off_data"][0] == {"K": 128, "label": "generalized",
                                         "precision": 0.01, "heldout_precision": 0.965}
    assert caps["MC"]["value"] == 32  # copies stay on the data: MC is untouched


def test_memorized_samples_off_the_data_do_not_make_mc():
    table = FractionTable([2, 8, 32], [[1, 0, 0], [0.95, 0, 0.05], [0, 0, 1]], [100] * 3,
                          precision=[[0.2, np.nan, np.nan], [0.9, np.nan, 0.9],
                                     [np.nan, np.nan, 0.9]],
                          heldout_precision=[0.9, 0.9, 0.9])
    caps = capacities(table, n_resamples=50)
    assert caps["MC"].value == 8 and caps["GC"].value == 32
    table = FractionTable([2, 8], [[1, 0, 0], [0.95, 0, 0.05]], [100] * 2,
                          precision=[[0.2, np.nan, np.nan], [0.4, np.nan, 0.9]],
                          heldout_precision=[0.9, 0.9])
    mc = capacities(table, n_resamples=50)["MC"]
    assert mc.value is None and "at K = 8 the memorized samples have precision 0.40" in str(mc)


def _sweep(tmp_path, config, *sets):
    result = run("sweep", ROOT / "configs" / config, *sum((["--set", s] for s in sets), []),
                 "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    return result.output, tmp_path / "run"


@pytest.mark.slow
def test_a_30_step_sweep_does_not_report_gc(tmp_path):
    """An untrained U-Net (30 steps) outputs noise: every sample "generalized", precision
    ≈ 0.03 against ≈ 0.97 for held-out digits. GC is not reached, and the CLI line,
    capacities.json and the report say why."""
    pytest.importorskip("sklearn")
    output, run_dir = _sweep(tmp_path, "images-cpu.yaml", "Ks=[8, 64]", "train.iterations=30",
                             "train.snapshots=[]", "sample.steps=10", "sample.n_eval=40",
                             "measure.bootstrap=50", "executor.workers=1")
    rows = list(csv.DictReader((run_dir / "fractions.csv").open()))
    assert float(rows[0]["generalized"]) == 1.0  # the fraction alone would make GC = 8
    assert float(rows[0]["precision_generalized"]) < 0.5 * float(rows[0]["baseline_precision"])
    line = next(x for x in output.splitlines() if x.startswith("GC:"))
    assert line.startswith("GC: not reached — at K = 8 the generalized samples have precision")
    caps = json.loads((run_dir / "capacities.json").read_text())
    assert caps["GC"]["value"] is None and caps["GC"]["off_data"][0]["K"] == 8
    report = (run_dir / "report.html").read_text()
    assert "not reached — at K = 8 the generalized samples" in report
    assert "<th>K</th><th>precision</th>" in report  # the quality table, filled in
    # memgen capacities on the sweep's table applies the same rule
    again = ok(run("capacities", run_dir / "fractions.csv")).output.splitlines()[2]
    assert again.split(" (")[0] == line.split(" (")[0]


@pytest.mark.slow
def test_a_sweep_whose_samples_are_data_keeps_its_capacities(tmp_path):
    """The exact denoiser of K digits (the positive control) returns copies and mixtures of
    digits, on the data: MC and SC stay reached."""
    pytest.importorskip("sklearn")
    output, run_dir = _sweep(tmp_path, "control-spurious.yaml", "Ks=[4, 64]",
                             "sample.n_eval=60", "measure.bootstrap=50")
    caps = json.loads((run_dir / "capacities.json").read_text())
    assert caps["MC"]["value"] == 4 and caps["SC"]["value"] == 64
    assert "MC: K = 4 (" in output


def test_real_images_as_samples_reach_gc_and_noise_does_not(tmp_path):
    """Unseen real digits are generalized samples of the best kind: GC is reached. Uniform
    noise is just as "generalized", but off the data: GC is not reached."""
    pytest.importorskip("sklearn")
    from memgen.data import load_dataset
    from memgen.experiments.aggregate import Measured
    from memgen.experiments.sweep import write_fractions

    pool = load_dataset("digits", "train")
    pool = pool[np.random.default_rng(0).permutation(len(pool))]
    noise = np.random.default_rng(1).uniform(-1, 1, (100, *pool.shape[1:])).astype(np.float32)
    for name, samples in (("real", pool[1500:1600]), ("noise", noise)):
        rows = [Measured(K, memgen.classify(pool[:K], samples, pool[1600:], delta_s=0.3,
                                            heldout=pool[1000:1500]).summary(), tmp_path)
                for K in (128, 256)]
        write_fractions(tmp_path / f"{name}.csv", rows)
    real = capacities(read_fraction_table(tmp_path / "real.csv"), n_resamples=50)["GC"]
    assert real.value == 128, str(real)
    fake = capacities(read_fraction_table(tmp_path / "noise.csv"), n_resamples=50)["GC"]
    assert fake.value is None and str(fake).startswith(
        "GC: not reached — at K = 128 the generalized samples have precision 0.00 against")


# ------------------------------------------------------------ 2. hygiene halves


def _train(out: Path, *args) -> Path:
    ok(run("train", *args, "--checkpoint-every", 1000, "--out", out))
    return out / "checkpoint.pt"


@pytest.fixture(scope="module")
def circle_models(tmp_path_factory):
    """Toy models on the circle: K = 8 of half 1 (two seeds), K = 8 of half 2, K = 32."""
    root = tmp_path_factory.mktemp("halves")
    common = ("--data", "circle", "--preset", "toy-mlp", "--iterations", 3)
    return {"a": _train(root / "a", *common, "--K", 8),
            "a-seed": _train(root / "a-seed", *common, "--K", 8, "--seed", 5),
            "b": _train(root / "b", *common, "--K", 8, "--half", 2),
            "big": _train(root / "big", *common, "--K", 32)}


def _halves(a, b, out, *extra):
    return run("hygiene", "halves", "--checkpoint-a", a, "--checkpoint-b", b, "--n", 12,
               "--steps", 5, *extra, "--out", out)


def test_halves_refuses_the_same_model_twice(circle_models, tmp_path):
    out = tmp_path / "h"
    assert_fails(_halves(circle_models["a"], circle_models["a"], out), "the same model", out,
                 tmp_path)
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("checkpoint.pt", "train.npz"):  # the same bytes in another folder
        (copy / name).write_bytes((circle_models["a"].parent / name).read_bytes())
    assert_fails(_halves(circle_models["a"], copy / "checkpoint.pt", out), "identical bytes",
                 out, tmp_path)
    # another seed on the same training set: not two halves either
    assert_fails(_halves(circle_models["a"], circle_models["a-seed"], out),
                 "trained on the same training set", out, tmp_path)


def test_halves_refuses_nested_and_overlapping_sets(circle_models, tmp_path):
    out = tmp_path / "h"
    assert_fails(_halves(circle_models["a"], circle_models["big"], out),
                 "nested: the 8 of model a are among the 32 of model b", out, tmp_path)
    # a --train-b that is not the set its checkpoint records is refused as well
    other = save(tmp_path / "other.npz", np.load(circle_models["big"].parent / "train.npz")
                 ["samples"][:8])
    assert_fails(_halves(circle_models["a"], circle_models["b"], out, "--train-b", other),
                 "is not the training set of", out, tmp_path)
    # a set of a model without train.npz that shares samples with the other: refused
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "checkpoint.pt").write_bytes(circle_models["b"].read_bytes())
    mixed = np.load(circle_models["a"].parent / "train.npz")["samples"].copy()
    mixed[4:] = np.load(circle_models["b"].parent / "train.npz")["samples"][4:]
    result = _halves(circle_models["a"], bare / "checkpoint.pt", out, "--train-b",
                     save(tmp_path / "mixed.npz", mixed))
    assert result.exit_code == 1 and "share 4 samples" in result.output
    assert not out.exists()


def test_halves_disjoint_models_run_and_report_quality(circle_models, tmp_path):
    result = ok(_halves(circle_models["a"], circle_models["b"], tmp_path / "h"))
    summary = json.loads((tmp_path / "h" / "summary.json").read_text())
    assert set(summary["quality"]) >= {"precision_a", "precision_b", "baseline_a",
                                       "baseline_b", "off_data", "meaning"}
    assert "sample quality: precision" in result.output


def test_two_noise_models_are_flagged_not_read_as_generalizing(tmp_path):
    """Two U-Nets trained 2 steps on disjoint halves of the digits return (nearly) the same
    noise from the same seed: "closer to each other than to any training image: 100%", the
    generalization signature — but their precision against real digits is 0."""
    pytest.importorskip("sklearn")
    common = ("--data", "digits", "--K", 32, "--preset", "digits-8", "--iterations", 2)
    a = _train(tmp_path / "a", *common)
    b = _train(tmp_path / "b", *common, "--half", 2)
    result = ok(_halves(a, b, tmp_path / "h"))
    summary = json.loads((tmp_path / "h" / "summary.json").read_text())
    assert summary["share_closer_to_each_other"] == 1.0  # what the old output read as 100 %
    q = summary["quality"]
    assert q["off_data"] and q["precision_a"] < 0.5 * q["baseline_a"]
    assert "not a generalization signature: the samples are off the data" in result.output


def test_halves_quality_tells_real_images_from_noise():
    pytest.importorskip("sklearn")
    from memgen.data import load_dataset
    from memgen.metrics.hygiene import halves_quality

    pool = load_dataset("digits", "train")
    a, b, unseen = pool[:100], pool[100:200], pool[200:240]
    real = halves_quality(unseen[:20], unseen[20:], a, b)
    assert not real.off_data and real.precision_a > 0.5 * real.baseline_a
    noise = np.random.default_rng(0).uniform(-1, 1, (20, *pool.shape[1:])).astype(np.float32)
    fake = halves_quality(noise, unseen[20:], a, b)
    assert fake.off_data and fake.precision_a == 0.0


# ------------------------------------------------------------ 3. diagnose


@pytest.fixture(scope="module")
def half_two(tmp_path_factory):
    """A toy model trained on the second 4 of the circle's split (--half 2)."""
    return _train(tmp_path_factory.mktemp("diag") / "run", "--data", "circle", "--K", 4,
                  "--half", 2, "--preset", "toy-mlp", "--iterations", 3)


def _diagnose(ckpt, out, *extra):
    return run("diagnose", "--no-progress", "--checkpoint", ckpt, "--sigma", 0.1, 1, "--n", 8,
               *extra, "--out", out)


def test_diagnose_builds_the_exact_denoiser_from_the_checkpoints_own_set(half_two, tmp_path,
                                                                         monkeypatch):
    import memgen.cli.diagnose as diagnose_cli

    built = []
    real = diagnose_cli.load_denoiser

    def spy(**kwargs):
        built.append(kwargs.get("exact"))
        return real(**kwargs)

    monkeypatch.setattr(diagnose_cli, "load_denoiser", spy)
    ok(_diagnose(half_two, tmp_path / "d"))
    recorded = np.load(half_two.parent / "train.npz")["samples"]
    np.testing.assert_array_equal(built[-1], recorded)
    assert json.loads((tmp_path / "d" / "diagnose.json").read_text())["train"].endswith(
        "train.npz")
    # naming the same set again (--data circle --K 4 --half 2) is accepted: the same numbers
    ok(_diagnose(half_two, tmp_path / "again", "--data", "circle", "--K", 4, "--half", 2))
    np.testing.assert_array_equal(built[-1], recorded)
    assert ((tmp_path / "d" / "diagnose.csv").read_text()
            == (tmp_path / "again" / "diagnose.csv").read_text())


@pytest.mark.parametrize("extra, phrase", [
    (["--data", "circle", "--K", 4], "--data circle --K 4 is not the training set of"),
    (["--data", "circle", "--K", 8, "--half", 2], "--data circle --K 8 --half 2 is not the"),
    (["--train", "{other}"], "other.npz is not the training set of"),
])
def test_diagnose_refuses_a_data_k_that_is_not_the_checkpoints(half_two, tmp_path, extra, phrase):
    other = save(tmp_path / "other.npz", np.zeros((4, 2), np.float32))
    out = tmp_path / "d"
    result = _diagnose(half_two, out, *[str(e).format(other=other) for e in extra])
    assert_fails(result, phrase, out, tmp_path)


# ------------------------------------------------------------ 4. the Python API


@pytest.fixture(scope="module")
def api_sets():
    rng = np.random.default_rng(5)
    train = rng.normal(size=(60, 6)).astype(np.float32)
    samples = np.concatenate([train[:10] + 0.01 * rng.normal(size=(10, 6)),
                              rng.normal(size=(30, 6))]).astype(np.float32)
    return train, samples, rng.normal(size=(200, 6)).astype(np.float32)


@pytest.fixture(scope="module")
def result(api_sets):
    train, samples, heldout = api_sets
    return memgen.classify(train, samples, heldout=heldout)


def test_classification_repr_is_a_few_lines_not_arrays(result):
    text = repr(result)
    lines = text.splitlines()
    assert 4 <= len(lines) <= 8 and "array(" not in text and "Neighbours(" not in text
    assert lines[0].startswith("Classification of 40 samples: rule paper")
    assert lines[1].split()[:2] == ["memorized", f"{result.fractions['memorized']:.4f}"]
    assert "null" in lines[1] and "precision" in text
    assert "array(" not in repr(result.quality) and len(repr(result.quality)) < 600


def test_capacities_repr_is_the_three_lines_of_the_cli(tmp_path):
    table = _write_table(tmp_path / "fractions.csv", MAIN_JOB)
    caps = memgen.capacities(table, bootstrap=100)
    cli = ok(run("capacities", table, "--bootstrap", 100)).output.strip()
    assert repr(caps) == cli and len(repr(caps).splitlines()) == 3
    assert repr(caps["GC"]) == f"Capacity({cli.splitlines()[2]})"
    assert caps.as_dict()["GC"]["value"] == 128 and caps.epsilon == 0.1


def test_label_names_and_null_rates_in_the_shape_of_the_fractions(result, api_sets):
    assert result.label_names == ("memorized", "spurious", "generalized")
    assert list(result.named_labels[:3]) == [result.label_names[c] for c in result.labels[:3]]
    assert set(result.null_rates) == set(result.fractions)
    assert result.null_rates == result.summary()["null"]["fractions"]
    assert {k: list(v) for k, v in result.null_ci95.items()} == result.summary()["null"]["ci95"]
    assert memgen.classify(*api_sets[:2]).null_rates is None


def test_to_frame_has_one_row_per_sample_with_named_columns(result):
    pd = pytest.importorskip("pandas")
    frame = result.to_frame()
    assert isinstance(frame, pd.DataFrame) and len(frame) == 40
    assert list(frame.columns) == ["label", "d1", "d2", "s1", "train_idx", "synth_idx",
                                   "in_manifold"]
    assert list(frame["label"]) == list(result.named_labels)
    np.testing.assert_array_equal(frame["d2"], result.neighbours.train_dist[:, 1])
    np.testing.assert_array_equal(frame["s1"], result.neighbours.synth_dist[:, 0])
    assert frame["in_manifold"].mean() == result.quality.quality.precision


def test_to_frame_without_pandas_says_so(result, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now fails
    with pytest.raises(ImportError, match="to_frame\\(\\) needs pandas: pip install pandas"):
        result.to_frame()


def test_memory_budget_is_mib_as_on_the_cli(api_sets, tmp_path):
    train, samples, _ = api_sets
    api = memgen.classify(train, samples, memory_budget=1).summary()["config"]
    out = tmp_path / "out"
    ok(run("classify", "--train", save(tmp_path / "t.npz", train), "--eval",
           save(tmp_path / "e.npz", samples), "--memory-budget", 1, "--out", out))
    cli = json.loads((out / "summary.json").read_text())["config"]
    assert api["memory_budget"] == cli["memory_budget"] == 2**20
    with pytest.warns(DeprecationWarning, match="read as bytes"):  # the former unit
        config = memgen.classify(train, samples, memory_budget=2**29).summary()["config"]
    assert config["memory_budget"] == 2**29
    with pytest.raises(memgen.UserError, match="positive number of MiB"):
        memgen.classify(train, samples, memory_budget=0)
    dist, _ = memgen.knn(samples, train, 3, memory_budget=0.001)  # a 1 kB block: still exact
    np.testing.assert_array_equal(dist, memgen.knn(samples, train, 3)[0])


def test_parameters_carry_the_cli_names_and_the_former_ones_warn(api_sets, tmp_path):
    train, samples, _ = api_sets
    labels = memgen.classify(train, eval=samples).labels
    with pytest.warns(DeprecationWarning, match="samples= is now eval="):
        np.testing.assert_array_equal(memgen.classify(train, samples=samples).labels, labels)
    with pytest.raises(TypeError, match="unexpected keyword argument 'sample'"):
        memgen.classify(train, sample=samples)
    table = _write_table(tmp_path / "fractions.csv", MAIN_JOB)
    with pytest.warns(DeprecationWarning, match="n_resamples= is now bootstrap="):
        old = memgen.capacities(table, n_resamples=50)
    assert old.as_dict() == memgen.capacities(table, bootstrap=50).as_dict()


def test_capacities_of_a_file_that_is_not_a_csv_is_a_user_error(tmp_path):
    np.savez(tmp_path / "labels.npz", labels=np.zeros(4, np.int8))
    assert_fails(run("capacities", tmp_path / "labels.npz"), "not a CSV table", None,
                 tmp_path)
    with pytest.raises(memgen.UserError, match="not a CSV table"):
        memgen.capacities(tmp_path / "labels.npz")


GOOD = dict(K=[2, 8], fractions=[[1, 0, 0], [0, 0, 1]])


@pytest.mark.parametrize("table, phrase", [
    (dict(K=[], fractions=np.zeros((0, 3))), "non-empty"),
    (dict(K=[8, 2], fractions=GOOD["fractions"]), "increasing order"),
    (dict(K=[2, 2], fractions=GOOD["fractions"]), "only once"),
    (dict(K=[2, 8], fractions=[[1.5, -0.5, 0], [0, 0, 1]]), "[0, 1]"),
    (dict(K=[2, 8], fractions=[[np.nan, 0, 1], [0, 0, 1]]), "[0, 1]"),
    (dict(K=[2, 8, 32], fractions=GOOD["fractions"]), "shape"),
    (dict(K=[2, 8], fractions=[[1, 0], [0, 1]]), "shape"),
    (dict(**GOOD, n_eval=[10]), "n_eval has shape"),
    (dict(**GOOD, n_eval=[10, 0]), "n_eval must be at least 1"),
    (dict(K=[2.5, 8], fractions=GOOD["fractions"]), "whole numbers"),
    (dict(K=["a", "b"], fractions=GOOD["fractions"]), "must hold numbers"),
    (dict(**GOOD, precision=[[1.2, 0, 0], [0, 0, 1]], heldout_precision=[1, 1]), "precisions"),
])
def test_capacities_bad_tables_are_user_errors(table, phrase):
    with pytest.raises(memgen.UserError, match=re.escape(phrase)):
        memgen.capacities(FractionTable(**table))


@pytest.mark.parametrize("call, phrase", [
    (lambda t: memgen.capacities({"K": [2]}), "FractionTable or the path"),
    (lambda t: memgen.capacities(t, epsilon=1.5), "epsilon"),
    (lambda t: memgen.capacities(t, epsilon=float("nan")), "epsilon"),
    (lambda t: memgen.capacities(t, epsilon="0.1"), "epsilon"),
    (lambda t: memgen.capacities(t, bootstrap=0), "resamples"),
    (lambda t: memgen.capacities(t, bootstrap=2.5), "resamples"),
    (lambda t: memgen.capacities(t, seed=-1), "seed"),
    (lambda t: memgen.capacities(Path("no/such/fractions.csv")), "no/such"),
])
def test_capacities_bad_arguments_are_user_errors(call, phrase):
    with pytest.raises(memgen.UserError, match=re.escape(phrase)):
        call(FractionTable(**GOOD))


def test_the_gate_reads_whichever_precision_columns_a_table_has(tmp_path):
    """A new user's table with precision_memorized alone: the memorized samples at K = 2
    have precision 0.3 against 0.95, so MC is not reached (it was, with the gate dropped
    for want of the other two columns)."""
    path = tmp_path / "partial.csv"
    path.write_text("K,memorized,spurious,generalized,n_eval,precision_memorized,"
                    "baseline_precision\n2,1,0,0,10,0.3,0.95\n8,0,0,1,10,,0.95\n")
    mc = ok(run("capacities", path, "--bootstrap", 50)).output.splitlines()[0]
    assert mc.startswith("MC: not reached — at K = 2 the memorized samples have precision "
                         "0.30 against 0.95"), mc
