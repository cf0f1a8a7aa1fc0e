"""Issue #23, items 5 and 9: headlines carry their quality (capacities, hygiene halves,
diagnose), and the Python API as a scientist uses it in a notebook."""

from __future__ import annotations

import csv
import json
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
    assert "not reached — at K = 8 the generalized samples" in (run_dir / "report.html").read_text()
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
