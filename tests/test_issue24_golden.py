"""Issue #24 changed the structure, not one number: the shipped tiny sweep and a fixed
classify give what memgen gave before the change (commit 22fd400).

tests/data/issue24_golden/ holds that code's outputs: the tiny sweep's fractions.csv and
capacities.json, and labels, neighbours and summary.json (less provenance and version) of
two classifies of sets built here from scikit-learn's digits (in memory; and a streamed
synthetic set with --calibrate --dedup). Labels, indices, counts and the tables must be
equal; distances equal to float64 rounding (another CPU's BLAS may sum in another order).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from memgen.cli import cli

GOLDEN = Path(__file__).parent / "data" / "issue24_golden"
TINY = Path(__file__).parents[1] / "configs" / "tiny.yaml"


def _digit_sets() -> dict[str, np.ndarray]:
    """60 training digits, 100 held out, and evaluated / synthetic sets of noisy blends of
    two training digits (seeded): the sets of the golden classify."""
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(0)
    digits = (load_digits().images.astype(np.float32) / 8 - 1)[:, None]  # (N, 1, 8, 8)
    train = digits[:60]

    def blends(n: int) -> np.ndarray:
        i, j = rng.integers(0, 60, n), rng.integers(0, 60, n)
        w = rng.uniform(0, 1, (n, 1, 1, 1)).astype(np.float32)
        x = w * train[i] + (1 - w) * train[j] + rng.normal(0, 0.05, (n, 1, 8, 8)).astype(
            np.float32)
        return np.clip(x, -1, 1).astype(np.float32)

    return {"train": train, "heldout": digits[60:160], "eval": blends(50), "synth": blends(300)}


@pytest.fixture(scope="module")
def digit_files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("golden-sets")
    sets = _digit_sets()
    for name, x in sets.items():
        np.savez(folder / f"{name}.npz", samples=x)
    (folder / "shards").mkdir()
    for k in range(3):
        np.save(folder / "shards" / f"s{k}.npy", sets["synth"][k * 100:(k + 1) * 100])
    return folder


def _classify(folder: Path, out: Path, synth: str, *flags: str) -> None:
    args = ["classify", "--train", str(folder / "train.npz"), "--eval",
            str(folder / "eval.npz"), "--synth", synth, "--heldout",
            str(folder / "heldout.npz"), "--out", str(out), *flags]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output


def _without_provenance(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in ("provenance", "version")}


def _assert_same(got, want, where: str = "summary") -> None:
    """Equal JSON trees; floats equal to 1e-12 relative (calibrated thresholds are
    quantiles of distances)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want), where
        for key in want:
            _assert_same(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_same(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and not isinstance(got, bool):
        assert got == pytest.approx(want, rel=1e-12, nan_ok=True), where
    else:
        assert got == want, where


@pytest.mark.parametrize("name, synth, flags", [
    ("c_l2", "synth.npz", ()),
    ("c_stream", "shards", ("--calibrate", "--dedup")),
])
def test_a_fixed_classify_gives_the_labels_and_neighbours_of_before(digit_files, tmp_path,
                                                                      name, synth, flags):
    want = json.loads((GOLDEN / "classify.json").read_text())[name]
    _classify(digit_files, tmp_path / name, str(digit_files / synth), *flags)
    got = np.load(tmp_path / name / "labels.npz")
    np.testing.assert_array_equal(got["labels"], want["labels"])
    np.testing.assert_array_equal(got["train_idx"], want["train_idx"])
    np.testing.assert_array_equal(got["synth_idx"], want["synth_idx"])
    np.testing.assert_allclose(got["train_dist"], want["train_dist"], rtol=1e-12)
    np.testing.assert_allclose(got["synth_dist"], want["synth_dist"], rtol=1e-12)
    summary = _without_provenance(json.loads((tmp_path / name / "summary.json").read_text()))
    _assert_same(summary, want["summary"])


def test_the_tiny_sweep_gives_the_table_and_capacities_of_before(tmp_path):
    result = CliRunner().invoke(cli, ["sweep", str(TINY), "--out", str(tmp_path / "tiny")])
    assert result.exit_code == 0, result.output
    assert ((tmp_path / "tiny" / "fractions.csv").read_text()
            == (GOLDEN / "tiny_fractions.csv").read_text())
    assert (json.loads((tmp_path / "tiny" / "capacities.json").read_text())
            == json.loads((GOLDEN / "tiny_capacities.json").read_text()))
