"""Issue #25, item 1: the public reference code's protocol as a classify option, and
``memgen rescore`` on the authors' file layouts.

The reference protocol is checked against a plain numpy re-implementation of the public
code's labelling (run_distances.py's top-k with its first same-set column dropped,
stats_utils.compute_metrics' absolute cutoffs), written here, on planted sets with exact
copies, duplicates within the generated set and distances exactly at the cutoffs.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

import memgen
from memgen.cli import cli
from memgen.metrics.features import FEATURE_MAPS, FeatureSpace, Flatten

DELTA_M, DELTA_S = 0.5, 0.75  # exact in binary: planted distances hit them exactly


def their_neighbours(gen: np.ndarray, train: np.ndarray, k: int = 5, power: int = 1):
    """run_distances.py's procedure by brute force: the k smallest distances to the
    training split; within the generated set the k + 1 smallest, first column dropped."""
    g, t = gen.reshape(len(gen), -1).astype(np.float64), train.reshape(len(train), -1)
    data = np.linalg.norm(g[:, None] - t[None].astype(np.float64), axis=-1) ** power
    synth = np.linalg.norm(g[:, None] - g[None], axis=-1) ** power
    data_idx = np.argsort(data, axis=1, kind="stable")[:, :min(k, len(t))]
    synth_idx = np.argsort(synth, axis=1, kind="stable")[:, :min(k + 1, len(g))][:, 1:]
    rows = np.arange(len(g))[:, None]
    return data[rows, data_idx], synth[rows, synth_idx], data_idx, synth_idx


def their_labels(data_dists: np.ndarray, synth_dists: np.ndarray, delta_m: float,
                 delta_s: float) -> np.ndarray:
    """compute_metrics: 0 memorized (d1 ≤ δ_m), 1 spurious (s1 ≤ δ_s, not memorized), 2."""
    m = data_dists[:, 0] <= delta_m
    s = (synth_dists[:, 0] <= delta_s) & ~m
    return np.where(m, 0, np.where(s, 1, 2))


def planted() -> tuple[np.ndarray, np.ndarray]:
    """12 training images on a 1/8 grid and 30 generated ones: exact copies, copies moved
    by exactly δ_m (a tie at the cutoff) and just past it, a sample twice and one three
    times, a pair exactly δ_s apart, and random ones."""
    rng = np.random.default_rng(3)
    train = rng.integers(-6, 3, (12, 1, 4, 4)).astype(np.float32) / 8  # in [-0.75, 0.25]
    gen = [train[0], train[1].copy(), train[2].copy(), train[3].copy()]
    gen[1][0, 0, 0] += DELTA_M  # d1 = δ_m exactly: memorized (≤)
    gen[2][0, 1, 1] += DELTA_M + 0.125  # just past δ_m
    gen[3][0, 2, 2] += 0.625  # a near-copy past δ_m, alone: generalized
    far = rng.uniform(-1, 1, (4, 1, 4, 4)).astype(np.float32)
    twin = far[1].copy()
    twin[0, 3, 3] = far[1][0, 3, 3] - DELTA_S if far[1][0, 3, 3] > 0 else far[1][0, 3, 3] + DELTA_S
    gen += [far[0], far[0], far[1], twin, far[2], far[2], far[2], far[3]]
    gen += list(rng.uniform(-1, 1, (18, 1, 4, 4)).astype(np.float32))
    return train, np.stack(gen).astype(np.float32)


def test_the_reference_protocol_labels_as_the_public_code(tmp_path):
    train, gen = planted()
    result = memgen.classify(train, gen, protocol="reference", delta_m=DELTA_M, delta_s=DELTA_S)
    d, s, _, _ = their_neighbours(gen, train)
    want = their_labels(d, s, DELTA_M, DELTA_S)
    np.testing.assert_array_equal(result.labels, want)
    np.testing.assert_allclose(result.neighbours.train_dist, d, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(result.neighbours.synth_dist, s, rtol=1e-12, atol=1e-12)
    # the planted cases each took the branch they were made for
    assert list(want[:4]) == [0, 0, 2, 2] and d[1, 0] == DELTA_M  # d1 = δ_m: memorized
    assert (want[4:6] == 1).all() and (want[8:11] == 1).all()  # duplicates: s1 = 0
    assert s[6, 0] == DELTA_S and want[6] == 1  # s1 = δ_s exactly: spurious (≤)
    assert (want == 1).sum() == 7 and (want == 2).sum() == 21


def test_the_summary_states_the_protocol_units_and_breakdown():
    train, gen = planted()
    summary = memgen.classify(train, gen, protocol="reference", delta_m=DELTA_M,
                              delta_s=DELTA_S).summary()
    d, s, _, _ = their_neighbours(gen, train)
    labels = their_labels(d, s, DELTA_M, DELTA_S)
    block = summary["protocol"]
    assert (block["name"], block["k"], summary["rule"]) == ("reference", 5, "absolute")
    assert block["distance"]["squared"] is False and block["distance"]["power"] == 1
    ratio = (d[:, 0] / d[:, 1])[labels == 1]
    want = [int((ratio <= 1 / 3).sum()), int(((ratio > 1 / 3) & (ratio <= 2 / 3)).sum()),
            int((ratio > 2 / 3).sum())]
    split = block["spurious_by_d1_d2"]
    assert list(split["counts"].values()) == want and split["n"] == int((labels == 1).sum())
    assert summary["config"]["protocol"] == "reference"
    assert "protocol" not in memgen.classify(train, gen).summary()["config"]  # as before


def test_a_squared_metric_is_stated_and_cut_in_its_squared_units(monkeypatch):
    monkeypatch.setitem(FEATURE_MAPS, "l2sq", FeatureSpace(
        "l2sq", embedding=lambda: Flatten.embed, power=2, help="squared Euclidean"))
    train, gen = planted()
    result = memgen.classify(train, gen, protocol="reference", metric="l2sq",
                             delta_m=DELTA_M ** 2, delta_s=DELTA_S ** 2)
    d, s, _, _ = their_neighbours(gen, train, power=2)
    np.testing.assert_array_equal(result.labels, their_labels(d, s, DELTA_M ** 2, DELTA_S ** 2))
    assert result.summary()["protocol"]["distance"]["squared"] is True


@pytest.mark.parametrize("extra, message", [
    (("--synth", "S"), "synthetic set is the evaluated set itself"),
    (("--rule", "paper"), "--rule paper contradicts it"),
    (("--k", "3"), "--k 3 contradicts it"),
    (("--calibrate", "--heldout", "H"), "not calibrated"),
])
def test_options_that_contradict_the_reference_protocol_are_refused(tmp_path, extra, message):
    train, gen = planted()
    np.savez(tmp_path / "train.npz", samples=train)
    np.savez(tmp_path / "gen.npz", samples=gen)
    np.savez(tmp_path / "held.npz", samples=gen[:5] * 0.5)
    paths = {"S": str(tmp_path / "gen.npz"), "H": str(tmp_path / "held.npz")}
    args = ["classify", "--train", str(tmp_path / "train.npz"), "--eval",
            str(tmp_path / "gen.npz"), "--protocol", "reference", "--delta-m", "0.5",
            "--delta-s", "0.75", "--out", str(tmp_path / "out"),
            *(paths.get(a, a) for a in extra)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_classify_protocol_reference_on_the_command_line(tmp_path):
    train, gen = planted()
    np.savez(tmp_path / "train.npz", samples=train)
    np.savez(tmp_path / "gen.npz", samples=gen)
    result = CliRunner().invoke(cli, [
        "classify", "--train", str(tmp_path / "train.npz"), "--eval", str(tmp_path / "gen.npz"),
        "--protocol", "reference", "--delta-m", "0.5", "--delta-s", "0.75",
        "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    d, s, _, _ = their_neighbours(gen, train)
    assert summary["counts"]["spurious"] == int((their_labels(d, s, 0.5, 0.75) == 1).sum())


def _their_files(tmp_path, K: int, train, gen):
    """Their layout: dists/K.npz (run_distances.py), synths/K.npz (key samples), and the
    training split as train/K.npz."""
    d, s, di, si = their_neighbours(gen, train)
    for folder in ("dists", "synths", "train"):
        (tmp_path / folder).mkdir(exist_ok=True)
    np.savez_compressed(tmp_path / "dists" / f"{K}.npz", **{
        "data-dists": d.astype(np.float32), "synth-dists": s.astype(np.float32),
        "data-indices": di, "synth-indices": si})
    np.savez(tmp_path / "synths" / f"{K}.npz", samples=gen)
    np.savez(tmp_path / "train" / f"{K}.npz", samples=train)
    return d, s


def test_rescore_reads_both_of_their_layouts(tmp_path):
    train, gen = planted()
    d, s = _their_files(tmp_path, 12, train, gen)
    rng = np.random.default_rng(5)
    d2, s2 = _their_files(tmp_path, 20, rng.uniform(-1, 1, (20, 1, 4, 4)).astype(np.float32),
                          rng.uniform(-1, 1, (25, 1, 4, 4)).astype(np.float32))
    result = CliRunner().invoke(cli, [
        "rescore", "--dists", str(tmp_path / "dists"), "--samples", str(tmp_path / "synths"),
        "--train", str(tmp_path / "train"), "--delta-m", "0.5", "--delta-s", "0.75",
        "--out", str(tmp_path / "rescore.csv")])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(tmp_path / "rescore.csv")))
    assert [(r["K"], r["source"]) for r in rows] == [
        ("12", "distances"), ("12", "samples"), ("20", "distances"), ("20", "samples")]
    for (dd, ss), pair in (((d, s), rows[:2]), ((d2, s2), rows[2:])):
        labels = their_labels(dd, ss, 0.5, 0.75)
        paper_m = dd[:, 0] / (dd[:, 1] + 1e-6) <= 1 / 3
        paper_s = (ss[:, 0] / (dd[:, 0] + ss[:, 0] + 1e-6) <= 1 / 3) & ~paper_m
        for row in pair:  # the float32 distance file and memgen's own search agree
            assert float(row["reference_spurious"]) == pytest.approx((labels == 1).mean())
            assert float(row["reference_memorized"]) == pytest.approx((labels == 0).mean())
            assert float(row["paper_same_set_memorized"]) == pytest.approx(paper_m.mean())
            assert float(row["paper_same_set_spurious"]) == pytest.approx(paper_s.mean())
            assert sum(int(row[f"spurious_{b}"]) for b in ("near_copy", "between",
                                                           "equidistant")) == (labels == 1).sum()
    assert "K = 12" in result.output and "spurious by d1/d2" in result.output


@pytest.mark.parametrize("args, message", [
    (("--l2-path",), "5 farthest"),
    (("--samples", "SYN"), "needs the training split"),
    ((), "give --dists"),
])
def test_rescore_refuses_what_it_cannot_read(tmp_path, args, message):
    train, gen = planted()
    _their_files(tmp_path, 12, train, gen)
    given = [str(tmp_path / "synths") if a == "SYN" else a for a in args]
    if "--l2-path" in given:
        given = ["--dists", str(tmp_path / "dists"), *given]
    result = CliRunner().invoke(cli, ["rescore", *given])
    assert result.exit_code == 1 and message in result.output, result.output


def test_rescore_refuses_a_file_without_their_keys(tmp_path):
    (tmp_path / "d").mkdir()
    np.savez(tmp_path / "d" / "8.npz", samples=np.zeros((3, 1, 2, 2)))
    result = CliRunner().invoke(cli, ["rescore", "--dists", str(tmp_path / "d")])
    assert result.exit_code == 1 and "missing data-dists" in result.output, result.output


def test_a_sweep_labels_by_the_reference_protocol_as_classify_does(tmp_path):
    """measure.protocol: reference in a sweep: the rule left unset is the protocol's, S′ is
    S_eval itself; each K's labels equal memgen classify --protocol reference on its set."""
    from pathlib import Path

    from memgen.experiments.config import load_config
    from memgen.experiments.sweep import run_sweep

    tiny = Path(__file__).parents[1] / "configs" / "tiny.yaml"
    config = load_config(tiny, ["Ks=[2, 9]", "sample.n_eval=40", "sample.min_synth=40",
                                "sample.steps=30", "measure.bootstrap=20",
                                "measure.protocol=reference", "measure.delta_m=0.05",
                                "measure.delta_s=0.03"])
    assert config.measure.rule == "absolute"
    result = run_sweep(config, tmp_path / "run", progress=False)
    for stage in result.results:
        assert stage.summary["protocol"]["name"] == "reference"
        assert stage.summary["rule"] == "absolute"
        np.savez(tmp_path / "train.npz", samples=_train_of(stage, config))
        out = tmp_path / f"classify-{stage.K}"
        ran = CliRunner().invoke(cli, [
            "classify", "--train", str(tmp_path / "train.npz"), "--eval", str(stage.eval_path),
            "--protocol", "reference", "--delta-m", "0.05", "--delta-s", "0.03",
            "--out", str(out)])
        assert ran.exit_code == 0, ran.output
        with np.load(out / "labels.npz") as mine, np.load(stage.folder / "labels.npz") as swept:
            np.testing.assert_array_equal(mine["labels"], swept["labels"])


def _train_of(stage, config) -> np.ndarray:
    from memgen.experiments.stages import load_pool, split

    return split(load_pool(config), stage.K, config)[0]
