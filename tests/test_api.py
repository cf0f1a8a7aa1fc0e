"""The public Python API reads like the CLI and gives the CLI's numbers (issue #13, item 7)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_cli import run, save

import memgen

TINY = Path(__file__).parents[1] / "configs" / "tiny.yaml"


@pytest.fixture
def sets(tmp_path):
    rng = np.random.default_rng(5)
    train = rng.normal(size=(60, 6)).astype(np.float32)
    samples = np.concatenate([train[:10] + 0.01 * rng.normal(size=(10, 6)),
                              rng.normal(size=(30, 6))]).astype(np.float32)
    heldout = rng.normal(size=(200, 6)).astype(np.float32)
    return {"arrays": (train, samples, heldout),
            "paths": [save(tmp_path / f"{n}.npz", a) for n, a in
                      zip(("train", "eval", "heldout"), (train, samples, heldout))]}


def test_classify_equals_the_cli(sets, tmp_path):
    train, samples, heldout = sets["arrays"]
    result = memgen.classify(train, samples, heldout=heldout, calibrate=True, seed=2)
    t, e, h = sets["paths"]
    out = tmp_path / "out"
    cli = run("classify", "--train", t, "--eval", e, "--heldout", h, "--calibrate", "--seed", 2,
              "--out", out)
    assert cli.exit_code == 0, cli.output
    with np.load(out / "labels.npz", allow_pickle=False) as archive:
        np.testing.assert_array_equal(result.labels, archive["labels"])
        np.testing.assert_array_equal(result.neighbours.train_idx, archive["train_idx"])
        np.testing.assert_array_equal(result.neighbours.synth_dist, archive["synth_dist"])
    summary = json.loads((out / "summary.json").read_text())
    assert result.fractions == summary["fractions"]
    assert {k: list(v) for k, v in result.ci95.items()} == summary["ci95"]
    assert result.summary()["null"] == summary["null"]
    # the ten planted copies, with the paper's thresholds
    assert memgen.classify(train, samples).counts["memorized"] == 10


def test_classify_takes_paths_tensors_and_uint8_like_the_cli(sets, tmp_path):
    import torch

    train, samples, _ = sets["arrays"]
    t, e, _ = sets["paths"]
    from_paths = memgen.classify(t, e)
    from_tensors = memgen.classify(torch.from_numpy(train), torch.from_numpy(samples))
    np.testing.assert_array_equal(from_paths.labels, from_tensors.labels)
    images = np.random.default_rng(0).integers(0, 256, size=(20, 1, 4, 4), dtype=np.uint8)
    as_uint8 = memgen.classify(images[:12], images[12:])
    as_float = memgen.classify(images[:12].astype(np.float32) / 127.5 - 1,
                               images[12:].astype(np.float32) / 127.5 - 1)
    np.testing.assert_array_equal(as_uint8.neighbours.train_dist, as_float.neighbours.train_dist)


def test_bad_input_is_a_user_error_before_any_work(sets):
    train, samples, _ = sets["arrays"]
    with pytest.raises(memgen.UserError, match="strictly between 0 and 1"):
        memgen.classify(train, samples, delta_m=2.0)
    with pytest.raises(memgen.UserError, match="NaN"):
        memgen.classify(np.full((5, 6), np.nan), samples)


def test_knn_is_exact_with_the_query_first():
    rng = np.random.default_rng(1)
    query, ref = rng.normal(size=(7, 3)), rng.normal(size=(50, 3))
    dist, idx = memgen.knn(query, ref, 3)
    brute = np.linalg.norm(query[:, None] - ref[None], axis=-1)
    np.testing.assert_array_equal(idx, np.argsort(brute, axis=1)[:, :3])
    np.testing.assert_allclose(dist, np.sort(brute, axis=1)[:, :3], rtol=1e-12)


def test_sweep_and_capacities_equal_the_cli(tmp_path):
    caps = memgen.sweep(TINY, tmp_path / "api", ["Ks=[2, 9]"], progress=False)
    result = run("sweep", TINY, "--out", tmp_path / "cli", "--set", "Ks=[2, 9]")
    assert result.exit_code == 0, result.output
    assert ((tmp_path / "api" / "fractions.csv").read_text()
            == (tmp_path / "cli" / "fractions.csv").read_text())
    assert caps.as_dict() == json.loads((tmp_path / "cli" / "capacities.json").read_text())
    again = memgen.capacities(tmp_path / "cli" / "fractions.csv", epsilon=0.1, bootstrap=200)
    assert again["MC"].as_dict() == caps["MC"].as_dict()


def test_import_memgen_loads_no_torch():
    code = "import sys, memgen; print('torch' in sys.modules, sorted(memgen.__all__))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.startswith("False")
    for name in ("classify", "knn", "capacities", "sweep"):
        assert name in out
    for name in memgen.__all__:
        assert getattr(memgen, name).__doc__ or name == "__version__"
