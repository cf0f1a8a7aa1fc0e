"""measure.compare: both detection protocols on the same samples of a sweep (issue #25 item 1).

Known answers: a direct ``memgen.classify(..., protocol=...)`` on the sweep's stored sets;
the cache's folders and the generate calls before and after turning the option on; the d1/d2
bins by brute force on planted distances and on the stored sets; the files of the aggregate
as the option is toggled; one-line errors before any folder exists.
"""

import csv
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import memgen
import memgen.experiments.stages as stages_module
from memgen.cli import cli
from memgen.experiments.config import load_config
from memgen.experiments.protocol_outputs import protocol_outputs
from memgen.experiments.stages import load_pool, run_K, split
from memgen.experiments.sweep import run_sweep
from memgen.io import load_samples
from memgen.metrics.protocols import BREAKDOWN_BINS, breakdown_bins, copy_breakdown

TINY = Path(__file__).parents[1] / "configs" / "tiny.yaml"
SMALL = ["Ks=[2, 9]", "sample.n_eval=40", "sample.min_synth=40", "sample.steps=30",
         "measure.bootstrap=20"]
REFERENCE = ["measure.compare.delta_m=0.05", "measure.compare.delta_s=0.03"]


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("main, compare, cutoffs", [
    ([], REFERENCE, {"protocol": "reference", "delta_m": 0.05, "delta_s": 0.03}),
    (["measure.protocol=reference", "measure.delta_m=0.05", "measure.delta_s=0.03",
      "measure.compare.protocol=paper"], [], {"protocol": "paper"}),
])
def test_the_compared_protocol_equals_classify_on_the_stored_sets(tmp_path, main, compare,
                                                                  cutoffs):
    """Each way round: the compared classification of every K, and its protocols.csv row,
    equal memgen.classify by that protocol on the sweep's own S_eval (and S′ for the
    paper protocol), with the same held-out data."""
    config = load_config(TINY, SMALL + main + compare)
    result = run_sweep(config, tmp_path / "run", progress=False)
    rows = _rows(tmp_path / "run" / "protocols.csv")
    assert [(r["K"], r["protocol"]) for r in rows] == [
        (str(K), p) for K in (2, 9) for p in (config.measure.protocol, cutoffs["protocol"])]
    pool = load_pool(config)
    for stage, row in zip(result.results, rows[1::2]):
        train, heldout = split(pool, stage.K, config)
        synth = None if cutoffs["protocol"] == "reference" else load_samples(stage.synth_path)
        direct = memgen.classify(train, load_samples(stage.eval_path), synth, heldout=heldout,
                                 **cutoffs)
        with np.load(stage.compared.folder / "labels.npz") as swept:
            np.testing.assert_array_equal(swept["labels"], direct.labels)
        assert stage.compared.summary["fractions"] == pytest.approx(direct.fractions)
        assert stage.compared.summary["null"]["fractions"] == pytest.approx(direct.null_rates)
        for name, value in direct.fractions.items():
            assert float(row[name]) == pytest.approx(value, rel=1e-5)
            assert float(row[f"null_{name}"]) == pytest.approx(direct.null_rates[name],
                                                               rel=1e-5)
        assert stage.summary["config"].get("protocol", "paper") == config.measure.protocol


def test_turning_it_on_keeps_every_key_and_generates_nothing(tmp_path, monkeypatch):
    """The option adds one classify folder per K (the compared protocol's) and changes no
    key: no generate call, the same classify and generate folders, fractions.csv byte for
    byte."""
    run = tmp_path / "run"
    off = load_config(TINY, SMALL)
    run_sweep(off, run, progress=False)
    before = {p.name for p in (run / "cache").iterdir()}
    fractions = (run / "fractions.csv").read_bytes()
    calls = []
    real = stages_module.generate
    monkeypatch.setattr(stages_module, "generate",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    on = load_config(TINY, SMALL + REFERENCE)
    result = run_sweep(on, run, progress=False)
    assert calls == []
    after = {p.name for p in (run / "cache").iterdir()}
    assert before < after
    assert after - before == {s.compared.folder.name for s in result.results}
    assert all(name.startswith("classify-") for name in after - before)
    assert (run / "fractions.csv").read_bytes() == fractions
    for stage in result.results:  # the main classification and the sets: the same keys
        assert {stage.folder.name, stage.eval_path.parent.name,
                stage.synth_path.parent.name} <= before
        assert stage.compared.eval_path == stage.eval_path


def test_the_d1_d2_bins_on_planted_distances():
    """Ratios exactly at the cuts (1/3 near_copy, 2/3 between), an exact copy (0/0), and
    copy_breakdown's counts equal the bins of its spurious samples."""
    d = np.array([[1, 3], [2, 3], [2.0001, 3], [0, 0], [3, 3], [0.5, 4], [2.5, 3]], float)
    np.testing.assert_array_equal(breakdown_bins(d), [0, 1, 2, 0, 2, 0, 2])
    labels = np.array([1, 1, 1, 0, 1, 2, 1])
    assert copy_breakdown(d, labels)["counts"] == {"near_copy": 1, "between": 1,
                                                   "equidistant": 3}


def test_the_breakdown_and_grid_of_a_digits_sweep_by_brute_force(tmp_path):
    """The exact denoiser on 8×8 digits at K = 4, nothing memorized at δ_m = 1e-9: the
    reference protocol calls the recurring near-copies spurious; protocols.csv's bins equal
    brute-force d1/d2 (numpy distances) of the brute-force labels, and the grid is drawn."""
    config = load_config(TINY, ["Ks=[4]", "data.name=digits", "sample.n_eval=60",
                                "sample.min_synth=60", "sample.steps=30",
                                "measure.bootstrap=20", "measure.compare.delta_m=1e-9",
                                "measure.compare.delta_s=3.0"])
    pool, run = load_pool(config), tmp_path / "run"
    result = run_K(run, pool, 4, config)
    figures = protocol_outputs(run, [result], config, pool)
    assert [f.name for f in figures] == ["protocols.png", "protocols-spurious-K4.png"]
    x = load_samples(result.eval_path).reshape(60, -1).astype(np.float64)
    t = split(pool, 4, config)[0].reshape(4, -1).astype(np.float64)
    d = np.sort(np.linalg.norm(x[:, None] - t[None], axis=2), axis=1)
    own = np.linalg.norm(x[:, None] - x[None], axis=2) + np.diag(np.full(60, np.inf))
    spurious = (d[:, 0] > 1e-9) & (own.min(axis=1) <= 3.0)
    ratio = d[:, 0] / d[:, 1]
    want = [int((spurious & (ratio <= 1 / 3)).sum()),
            int((spurious & (ratio > 1 / 3) & (ratio <= 2 / 3)).sum()),
            int((spurious & (ratio > 2 / 3)).sum())]
    row = _rows(run / "protocols.csv")[1]
    assert row["protocol"] == "reference" and sum(want) > 0
    assert [int(row[f"spurious_{b}"]) for b in BREAKDOWN_BINS] == want


def test_files_appear_and_disappear_with_the_option(tmp_path):
    run = tmp_path / "run"
    run_sweep(load_config(TINY, SMALL + REFERENCE), run, progress=False)
    assert (run / "protocols.csv").exists() and (run / "protocols.png").exists()
    report = (run / "report.html").read_text()
    assert "Both protocols on the same samples" in report and "s1 ≤ 0.03" in report
    assert "compare s" in report
    run_sweep(load_config(TINY, SMALL), run, progress=False)
    assert not (run / "protocols.csv").exists() and not (run / "protocols.png").exists()
    assert "Both protocols" not in (run / "report.html").read_text()


@pytest.mark.parametrize("extra, message", [
    (["measure.compare.protocol=paper"], "measure.compare.protocol: paper is measure.protocol"),
    (["measure.compare.protocol=bogus"], "measure.compare.protocol: 'bogus' is not one of"),
    (REFERENCE + ["measure.compare.rule=paper"], "measure.compare.rule: the reference protocol "
                                                 "uses the absolute rule"),
    (["measure.compare.protocol=reference"], "measure.compare: the absolute rule compares raw"),
    (["measure.compare.delta_m=-1", "measure.compare.delta_s=1"], "measure.compare: delta_m"),
    (["measure.compare.cutoff=1"], "measure.compare.cutoff: unknown key"),
])
def test_a_bad_value_is_one_line_before_any_work(tmp_path, extra, message):
    args = ["sweep", str(TINY), "--out", str(tmp_path / "run")]
    for item in extra:
        args += ["--set", item]
    ran = CliRunner().invoke(cli, args)
    assert ran.exit_code == 1 and message in ran.output, ran.output
    assert len(ran.output.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
