"""memgen diagnose: a denoiser against the exact one, checked against closed forms."""

import csv
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from model_fixtures import scripted_eps

from memgen.cli import cli
from memgen.diffusion.denoisers import EmpiricalDenoiser
from memgen.diffusion.schedules import VESchedule, VPSchedule
from memgen.probes.diagnose import COLUMNS, DiagnoseConfig, default_sigmas, denoiser_error


def _error(model, exact, data, sigmas, n=64, seed=0, batch_size=256):
    return denoiser_error(model, exact, data, sigmas, n_per_level=n, batch_size=batch_size,
                          generator=torch.Generator().manual_seed(seed))


def _shrinker(mu: float, s: float):
    """Posterior mean of y ~ N(μ, s² I) at level σ: D(x, σ) = μ + s²/(s² + σ²) (x − μ)."""
    return lambda x, sigma: mu + s**2 / (s**2 + sigma**2) * (x - mu)


# ------------------------------------------------------------------------------ library


def test_exact_denoiser_against_itself_is_zero_at_every_sigma(one_thread):
    data = torch.rand(5, 1, 6, 6, dtype=torch.float64) * 2 - 1
    chunked = EmpiricalDenoiser(data, memory_budget=8 * 5 * 3)  # 3 queries per block
    sigmas = np.geomspace(0.01, 200, 7)
    result = _error(EmpiricalDenoiser(data), chunked, data, sigmas, n=20, batch_size=7)
    assert result.rms.shape == (7,) and result.n_per_level == 20
    np.testing.assert_array_equal(result.sigma, sigmas)
    assert result.rms.max() < 1e-12 and result.rms_hi.max() < 1e-12
    np.testing.assert_allclose(result.rms_model_vs_clean, result.rms_exact_vs_clean, atol=1e-12)


def test_exact_denoiser_vs_clean_limits_for_two_points(one_thread):
    """σ → 0: D* returns the training point itself; σ → ∞: their mean, so every query is
    off by ‖y₁ − y₂‖/2 — RMS ‖y₁ − y₂‖/(2√D) exactly, with a zero-width interval."""
    data = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, -1.0, 0.5, 2.0]], dtype=torch.float64)
    result = _error(EmpiricalDenoiser(data), EmpiricalDenoiser(data), data, [1e-3, 1e7], n=50)
    expected = float((data[0] - data[1]).norm() / (2 * 2.0))
    assert result.rms_exact_vs_clean[0] < 1e-9
    np.testing.assert_allclose(result.rms_exact_vs_clean[1], expected, rtol=1e-5)
    np.testing.assert_allclose(result.rms_exact_vs_clean_hi[1] - result.rms_exact_vs_clean_lo[1],
                               0, atol=1e-5)


def test_two_gaussian_shrinkers_give_the_analytic_rms(one_thread):
    """Data y ~ N(μ, s² I); model D_a with the wrong s_m, reference the posterior mean D_b.

    D_a − D_b = (a − b)(x − μ) and E‖x − μ‖²/D = v + σ² (v: the data's mean square
    deviation from μ), so RMS = |a − b|√(v + σ²); against y: D − y = (c − 1)(y − μ) + cσn,
    mean square (1 − c)² v + c² σ² (c = a or b; for the posterior mean, ≈ s²σ²/(s² + σ²)).
    """
    mu, s, s_model, dim = 0.3, 1.0, 0.5, 32
    gen = torch.Generator().manual_seed(1)
    data = mu + s * torch.randn(4000, dim, generator=gen, dtype=torch.float64)
    v = float((data - mu).square().mean())
    sigmas = np.array([0.1, 1.0, 5.0, 20.0])
    result = _error(_shrinker(mu, s_model), _shrinker(mu, s), data, sigmas, n=2000)
    a, b = s_model**2 / (s_model**2 + sigmas**2), s**2 / (s**2 + sigmas**2)
    cases = [(result.rms, result.rms_lo, result.rms_hi, np.abs(a - b) * np.sqrt(v + sigmas**2)),
             (result.rms_model_vs_clean, result.rms_model_vs_clean_lo,
              result.rms_model_vs_clean_hi, np.sqrt((1 - a)**2 * v + a**2 * sigmas**2)),
             (result.rms_exact_vs_clean, result.rms_exact_vs_clean_lo,
              result.rms_exact_vs_clean_hi, np.sqrt((1 - b)**2 * v + b**2 * sigmas**2))]
    for rms, lo, hi, expected in cases:
        # 2000 queries × 32 coordinates: the RMS is within ~0.3 % (one standard error)
        np.testing.assert_allclose(rms, expected, rtol=0.015)
        half_width = (hi - lo) / 2  # ≈ 1.96 standard errors
        assert np.all(np.abs(rms - expected) < 2.5 * half_width), (rms, expected, lo, hi)
    np.testing.assert_allclose(result.rms_exact_vs_clean,
                               np.sqrt(s**2 * sigmas**2 / (s**2 + sigmas**2)), rtol=0.02)


def test_same_seed_same_numbers_and_rows(one_thread):
    data = torch.randn(10, 3, dtype=torch.float64)
    first = _error(_shrinker(0.0, 0.5), EmpiricalDenoiser(data), data, [0.5, 2.0], n=9, seed=4)
    again = _error(_shrinker(0.0, 0.5), EmpiricalDenoiser(data), data, [0.5, 2.0], n=9, seed=4)
    np.testing.assert_array_equal(first.rms, again.rms)
    rows = first.as_rows()
    assert len(rows) == 2 and tuple(rows[0]) == COLUMNS and rows[1]["n"] == 9
    assert rows[1]["rms_vs_exact"] == first.rms[1] and rows[0]["sigma"] == 0.5
    single = _error(_shrinker(0.0, 0.5), EmpiricalDenoiser(data), data, [1.0], n=1)
    assert np.isfinite(single.rms).all() and np.isnan(single.rms_lo).all()


def test_default_sigmas_cover_the_schedules():
    vp = default_sigmas(VPSchedule(), 12)
    assert vp.shape == (12,) and np.all(np.diff(np.log(vp)) > 0)
    np.testing.assert_allclose(np.diff(np.log(vp)), np.log(vp[1] / vp[0]), rtol=1e-9)
    assert vp[0] == pytest.approx(VPSchedule().sigma(0)) and 0.0099 < vp[0] < 0.0101
    assert vp[-1] == pytest.approx(VPSchedule().sigma(999)) and 156 < vp[-1] < 158
    VPSchedule().t_from_sigma(torch.from_numpy(vp))  # every level is on the schedule
    ve = default_sigmas(VESchedule(sigma_max=2.0, t_min=1e-2), 3)
    np.testing.assert_allclose(ve, [0.2, np.sqrt(0.2 * 2.0), 2.0])


@pytest.mark.parametrize("kwargs, message", [
    ({"sigmas": [0.0]}, "sigma"), ({"sigmas": [1.0, -1.0]}, "sigma"),
    ({"sigmas": [float("nan")]}, "sigma"), ({"sigmas": []}, "at least one"),
    ({"n_per_level": 0}, "n_per_level"), ({"batch_size": 0}, "batch_size")])
def test_bad_library_inputs_are_refused(kwargs, message):
    data = torch.zeros(2, 3)
    args = {"sigmas": [1.0], "n_per_level": 4, "batch_size": 4, **kwargs}
    den = EmpiricalDenoiser(data)
    with pytest.raises(ValueError, match=message):
        denoiser_error(den, den, data, args.pop("sigmas"), generator=torch.Generator(), **args)
    with pytest.raises(ValueError):
        default_sigmas(VPSchedule(), 1)
    with pytest.raises(ValueError, match="levels"):
        DiagnoseConfig(levels=1)


# ------------------------------------------------------------------------------ CLI


def _invoke(*args):
    return CliRunner().invoke(cli, ["diagnose", "--no-progress", *map(str, args)])


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """A 2D toy score model trained 5 steps on 4 circle points (train.npz beside it)."""
    run = tmp_path_factory.mktemp("toy") / "run"
    result = CliRunner().invoke(cli, ["train", "--data", "circle", "--K", "4", "--preset",
                                      "toy-mlp", "--iterations", "5", "--batch-size", "4",
                                      "--checkpoint-every", "5", "--out", str(run)])
    assert result.exit_code == 0, result.output
    return run


def test_cli_toy_checkpoint_writes_csv_json_png(toy_run, tmp_path, one_thread):
    out = tmp_path / "diag"
    result = _invoke("--checkpoint", toy_run / "checkpoint.pt", "--sigma", 0.05, 0.3, 1,
                     "--n", 32, "--out", out)
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} >= {"diagnose.csv", "diagnose.json", "diagnose.png"}
    rows = _rows(out / "diagnose.csv")
    assert tuple(rows[0]) == COLUMNS and [float(r["sigma"]) for r in rows] == [0.05, 0.3, 1.0]
    rms = np.array([float(r["rms_vs_exact"]) for r in rows])
    assert np.all(rms > 0.01)  # 5 training steps: far from the exact denoiser
    exact_vs_y = [float(r["rms_exact_vs_clean"]) for r in rows]
    assert exact_vs_y[0] < 0.05 < exact_vs_y[-1]  # D* ≈ the nearest point at small σ
    summary = json.loads((out / "diagnose.json").read_text())
    assert summary["K"] == 4 and summary["shape"] == [2]
    assert summary["config"]["sigmas"] == [0.05, 0.3, 1.0]
    assert summary["config"]["n_per_level"] == 32
    assert summary["schedule"]["kind"] == "VESchedule" and len(summary["levels"]) == 3
    assert (out / "diagnose.png").stat().st_size > 1000
    assert "vs exact" in result.output and "0.05" in result.output
    # --data/--K rebuild the same training set as train.npz: the same numbers
    again = _invoke("--checkpoint", toy_run / "checkpoint.pt", "--data", "circle", "--K", 4,
                    "--sigma", 0.05, 0.3, 1, "--n", 32, "--out", tmp_path / "again")
    assert again.exit_code == 0, again.output
    assert _rows(tmp_path / "again" / "diagnose.csv") == rows


def test_cli_image_checkpoint_default_ladder(tmp_path, one_thread):
    train = (np.random.default_rng(0).uniform(-1, 1, (3, 1, 16, 16))).astype(np.float32)
    np.savez(tmp_path / "t.npz", samples=train)
    result = CliRunner().invoke(cli, ["train", "--train", str(tmp_path / "t.npz"), "--preset",
                                      "fmnist-cpu-16", "--iterations", "2", "--batch-size", "3",
                                      "--checkpoint-every", "2", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    result = _invoke("--checkpoint", tmp_path / "run" / "checkpoint.pt", "--levels", 3, "--n", 4,
                     "--out", tmp_path / "diag")
    assert result.exit_code == 0, result.output
    sigma = [float(r["sigma"]) for r in _rows(tmp_path / "diag" / "diagnose.csv")]
    np.testing.assert_allclose(sigma, [VPSchedule().sigma(0), np.sqrt(VPSchedule().sigma(0)
                                       * VPSchedule().sigma(999)), VPSchedule().sigma(999)],
                               rtol=1e-5)


def test_cli_exact_against_itself_is_zero(tmp_path, one_thread):
    np.savez(tmp_path / "t.npz", samples=np.random.default_rng(1).uniform(
        -1, 1, (6, 1, 5, 5)).astype(np.float32))
    result = _invoke("--exact", tmp_path / "t.npz", "--levels", 5, "--n", 16,
                     "--out", tmp_path / "diag")
    assert result.exit_code == 0, result.output
    rows = _rows(tmp_path / "diag" / "diagnose.csv")
    assert len(rows) == 5 and max(float(r["rms_vs_exact"]) for r in rows) < 1e-5
    assert (tmp_path / "diag" / "diagnose.png").exists()


def test_cli_torchscript_model_that_is_exact_gives_zero(tmp_path, one_thread):
    """A scripted ε-model returning the exact ε of one point y is the exact denoiser of the
    one-point training set {y}: D(x, σ) = y at every σ of the schedule's ladder."""
    y = torch.linspace(-0.8, 0.8, 16).reshape(1, 4, 4)
    schedule = VPSchedule()

    scripted_eps(tmp_path / "eps.pt", y)
    np.savez(tmp_path / "t.npz", samples=y[None].numpy())
    sigmas = [repr(float(schedule.sigma(t))) for t in (0, 100, 500)]
    result = _invoke("--torchscript", tmp_path / "eps.pt", "--train", tmp_path / "t.npz",
                     "--sigma", *sigmas, "--n", 8, "--out", tmp_path / "diag")
    assert result.exit_code == 0, result.output
    rows = _rows(tmp_path / "diag" / "diagnose.csv")
    assert max(float(r["rms_vs_exact"]) for r in rows) < 1e-4
    bad = _invoke("--torchscript", tmp_path / "eps.pt", "--train", tmp_path / "t.npz",
                  "--shape", 1, 8, 8, "--sigma", 1, "--out", tmp_path / "bad")
    assert bad.exit_code != 0 and "shape" in bad.output and not (tmp_path / "bad").exists()


@pytest.fixture
def bad_inputs(toy_run, tmp_path):
    np.savez(tmp_path / "three_d.npz", samples=np.zeros((4, 3), dtype=np.float32))
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "keep.txt").write_text("mine")
    return toy_run / "checkpoint.pt", tmp_path


@pytest.mark.parametrize("args, message", [
    (["--checkpoint", "{tmp}/missing.pt"], "no such file"),
    ([], "exactly one of"),
    (["--checkpoint", "{ckpt}", "--exact", "{tmp}/three_d.npz"], "exactly one of"),
    (["--checkpoint", "{ckpt}", "--sigma", 0], "sigma"),
    (["--checkpoint", "{ckpt}", "--sigma", 0.5, -1], "sigma"),
    (["--checkpoint", "{ckpt}", "--sigma", 5], "--sigma: sigma must lie in"),
    (["--checkpoint", "{ckpt}", "--n", 0], "n_per_level"),
    (["--checkpoint", "{ckpt}", "--levels", 1], "levels"),
    (["--checkpoint", "{ckpt}", "--train", "{tmp}/three_d.npz"], "shape"),
    (["--checkpoint", "{ckpt}", "--train", "{tmp}/missing.npz"], "no such file"),
    (["--checkpoint", "{ckpt}", "--train", "{tmp}/three_d.npz", "--K", 4], "not both"),
    (["--exact", "{tmp}/three_d.npz", "--data", "circle", "--K", 4], "need --checkpoint"),
    (["--checkpoint", "{ckpt}", "--out-parent-is-a-file"], "is a file, not a folder"),
])
def test_bad_inputs_fail_early_with_one_line_and_no_output(bad_inputs, args, message):
    ckpt, tmp = bad_inputs
    out = tmp / "out"
    if "--out-parent-is-a-file" in args:
        args, out = args[:-1], tmp / "a_file" / "out"
    args = [str(a).format(ckpt=ckpt, tmp=tmp) for a in args]
    result = _invoke(*args, "--out", out)
    assert result.exit_code != 0
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert not out.exists()
    assert not [p for p in tmp.iterdir() if p.name.startswith(".out")]  # no temp folder


@pytest.mark.parametrize("target", ["a_file", "foreign"])
def test_out_that_memgen_did_not_write_is_refused(bad_inputs, target):
    ckpt, tmp = bad_inputs
    result = _invoke("--checkpoint", ckpt, "--sigma", 0.5, "--n", 2, "--out", tmp / target)
    assert result.exit_code != 0
    assert ("memgen did not write" if target == "foreign" else "is a file") in result.output
    assert (tmp / "a_file").read_text() == "x"
    assert [p.name for p in (tmp / "foreign").iterdir()] == ["keep.txt"]
