"""memgen basins critical-time | relative-energy | curvature, end to end on the exact model."""

import csv

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy.stats import norm

from memgen.cli import cli
from memgen.memory.energy import empirical_energy, empirical_hessian


def _invoke(*args):
    return CliRunner().invoke(cli, ["basins", *map(str, args)])


def _column(path, name):
    with open(path) as f:
        return np.array([float(row[name]) for row in csv.DictReader(f)])


@pytest.fixture
def two_points(tmp_path):
    np.savez(tmp_path / "train.npz", samples=np.array([[-1.0], [1.0]], dtype=np.float32))
    np.savez(tmp_path / "samples.npz", samples=np.array([[-1.0], [1.0]], dtype=np.float32))
    np.savez(tmp_path / "labels.npz", labels=np.array([0, 0]))
    return tmp_path


def test_critical_time_of_two_points_is_the_closed_form(two_points):
    out = two_points / "ct"
    result = _invoke("critical-time", "--exact", two_points / "train.npz", "--samples",
                     two_points / "samples.npz", "--labels", two_points / "labels.npz",
                     "--n-trials", 400, "--sigma-lo", 0.2, "--sigma-hi", 3, "--out", out)
    assert result.exit_code == 0, result.output
    sigma = _column(out / "critical.csv", "sigma")
    expected = 1 / norm.ppf(0.9)  # P(recovered) = Φ(1/σ) = p
    # 400 trials: the σ where the empirical rate crosses 0.9 moves by ~±10 %
    assert np.all(np.abs(sigma / expected - 1) < 0.15), sigma
    assert "memorized: n = 2" in result.output
    assert (out / "critical.png").exists() and (out / "summary.json").exists()


def test_relative_energy_matches_the_exact_energy(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.standard_normal((6, 3))
    x, ref = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    np.savez(tmp_path / "t.npz", samples=train.astype(np.float32))
    np.savez(tmp_path / "x.npz", samples=x.astype(np.float32))
    np.savez(tmp_path / "r.npz", samples=ref.astype(np.float32))
    result = _invoke("relative-energy", "--exact", tmp_path / "t.npz", "--samples",
                     tmp_path / "x.npz", "--reference", tmp_path / "r.npz", "--sigma", 0.7,
                     "--out", tmp_path / "re")
    assert result.exit_code == 0, result.output
    t64, x64, r64 = (torch.from_numpy(a.astype(np.float32)).double() for a in (train, x, ref))
    exact = (empirical_energy(r64, t64, 0.7) - empirical_energy(x64, t64, 0.7)).numpy()
    np.testing.assert_allclose(_column(tmp_path / "re" / "relative_energy.csv",
                                       "delta_energy"), exact, rtol=1e-5, atol=1e-6)


def test_curvature_in_2d_is_the_exact_hessian_spectrum(tmp_path):
    rng = np.random.default_rng(1)
    train = rng.standard_normal((5, 2)).astype(np.float32)
    np.savez(tmp_path / "t.npz", samples=train)
    np.savez(tmp_path / "x.npz", samples=train[:3])
    result = _invoke("curvature", "--exact", tmp_path / "t.npz", "--samples", tmp_path / "x.npz",
                     "--sigma", 0.5, "--n-eigen", 2, "--out", tmp_path / "cv")
    assert result.exit_code == 0, result.output
    hess = empirical_hessian(torch.from_numpy(train[:3]).double(),
                             torch.from_numpy(train).double(), 0.5)
    smallest = torch.linalg.eigvalsh(hess)[:, 0].numpy()
    np.testing.assert_allclose(_column(tmp_path / "cv" / "curvature.csv", "eig0"), smallest,
                               rtol=1e-8)
    with open(tmp_path / "cv" / "curvature.csv") as f:
        assert next(csv.reader(f)) == ["index", "label", "eig0", "eig1"]
    # Lanczos (--dense-max below D): --n-eigen 1 extreme eigenvalue per point
    result = _invoke("curvature", "--exact", tmp_path / "t.npz", "--samples", tmp_path / "x.npz",
                     "--sigma", 0.5, "--n-eigen", 1, "--dense-max", 1, "--out", tmp_path / "lz")
    assert result.exit_code == 0, result.output
    with open(tmp_path / "lz" / "curvature.csv") as f:
        assert next(csv.reader(f)) == ["index", "label", "eig0"]
    np.testing.assert_allclose(_column(tmp_path / "lz" / "curvature.csv", "eig0"), smallest,
                               rtol=1e-6)


def test_bad_labels_fail_in_one_line_and_write_nothing(two_points):
    np.savez(two_points / "bad.npz", labels=np.array([0, 1, 2]))
    result = _invoke("critical-time", "--exact", two_points / "train.npz", "--samples",
                     two_points / "samples.npz", "--labels", two_points / "bad.npz",
                     "--out", two_points / "no")
    assert result.exit_code != 0 and "--labels has 3 entries for 2 samples" in result.output
    assert not (two_points / "no").exists()
