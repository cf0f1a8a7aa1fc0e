"""Issue #25 item 4: the training-free generalizers (memgen.diffusion.analytic) against
brute force and closed forms, their sources' keys and checks, and r² (memgen.probes.r2)."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from memgen.cli import cli
from memgen.diffusion.analytic import ELSDenoiser, LinearDenoiser, SmoothedDenoiser
from memgen.diffusion.denoisers import EmpiricalDenoiser
from memgen.diffusion.loaders import load_denoiser
from memgen.errors import UserError
from memgen.experiments.config import ModelConfig, load_config
from memgen.experiments.stages import train_key
from memgen.probes.r2 import denoiser_r2, r2_scores

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

TINY = Path(__file__).parents[1] / "configs" / "tiny.yaml"
F64 = torch.float64


def _images(n, c, h, w, seed=0):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed),
                      dtype=F64) * 2 - 1


def els_brute(train, x, sigma, patch, equivariant):
    """The patch posterior by explicit loops over pixels and patches (zero padding)."""
    n, c, h, w = train.shape
    r = patch // 2
    pad = lambda a: torch.nn.functional.pad(a, (r, r, r, r))  # noqa: E731
    tp, xp = pad(train), pad(x)
    out = torch.zeros_like(x)
    for b in range(len(x)):
        for i in range(h):
            for j in range(w):
                mine = xp[b, :, i:i + patch, j:j + patch]
                logits, centres = [], []
                for k in range(n):
                    places = ([(u, v) for u in range(h) for v in range(w)] if equivariant
                              else [(i, j)])
                    for u, v in places:
                        theirs = tp[k, :, u:u + patch, v:v + patch]
                        logits.append(-((mine - theirs) ** 2).sum() / (2 * sigma**2))
                        centres.append(train[k, :, u, v])
                wts = torch.softmax(torch.stack(logits), 0)
                out[b, :, i, j] = (wts[:, None] * torch.stack(centres)).sum(0)
    return out


@pytest.mark.parametrize("equivariant", [True, False])
def test_els_equals_the_brute_force_patch_posterior(equivariant):
    train = _images(2, 1, 4, 4)
    x = _images(3, 1, 4, 4, seed=1) * 1.5
    got = ELSDenoiser(train, 3, equivariant)(x, 0.7)
    assert torch.allclose(got, els_brute(train, x, 0.7, 3, equivariant), atol=1e-10)
    tiny = ELSDenoiser(train, 3, equivariant, memory_budget=1)  # one candidate per block
    assert torch.allclose(tiny(x, 0.7), got, atol=1e-10)


def test_els_merges_repeated_patches_with_their_count():
    train = torch.full((2, 1, 4, 4), -1.0, dtype=F64)  # every interior patch alike
    train[1, 0, 0, 0] = 1.0
    x = _images(2, 1, 4, 4, seed=3)
    machine = ELSDenoiser(train, 3, True)
    assert len(machine.bank) < 2 * 16
    assert torch.allclose(machine(x, 0.5), els_brute(train, x, 0.5, 3, True), atol=1e-10)


def test_els_with_the_whole_image_and_no_equivariance_is_the_exact_denoiser():
    train = _images(5, 2, 3, 4)
    x = _images(6, 2, 3, 4, seed=2) * 2
    sigma = torch.tensor([0.3, 0.5, 1.0, 2.0, 0.4, 3.0], dtype=F64)
    got = ELSDenoiser(train, 7, False)(x, sigma)  # 7 = 2·max(3, 4) − 1
    assert torch.allclose(got, EmpiricalDenoiser(train)(x, sigma), atol=1e-10)
    smaller = ELSDenoiser(train, 5, False)(x, sigma)  # a corner pixel no longer sees it all
    assert not torch.allclose(smaller, got, atol=1e-3)


def test_smoothed_at_zero_smoothing_is_the_exact_denoiser():
    train = _images(7, 1, 3, 3)
    x = _images(4, 1, 3, 3, seed=4)
    exact = EmpiricalDenoiser(train)
    assert torch.equal(SmoothedDenoiser(train, 0.0)(x, 0.4), exact(x, 0.4))
    assert not torch.allclose(SmoothedDenoiser(train, 0.3)(x, 0.4), exact(x, 0.4), atol=1e-3)


def test_smoothed_is_the_gaussian_average_of_the_exact_denoiser():
    """One point: D = y for any smoothing. Two points ±a in 1-D: D_K(x, σ) = a tanh(ax/σ²),
    so D_s(x, σ) = E[a tanh(a(x + s(1 + σ)ε)/σ²)], here by Gauss–Hermite quadrature."""
    one = torch.tensor([[0.3, -0.2]], dtype=F64)
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert torch.allclose(SmoothedDenoiser(one, 0.5)(x, 0.7), one.expand(5, 2), atol=1e-12)
    a, s, sigma = 1.0, 0.2, 0.5
    two = torch.tensor([[a], [-a]], dtype=F64)
    x = torch.tensor([[0.0], [0.1], [-0.3], [0.6]], dtype=F64)
    got = SmoothedDenoiser(two, s, draws=4000)(x, sigma)
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    want = [(weights * a * np.tanh(a * (v + s * (1 + sigma) * nodes) / sigma**2)).sum()
            / math.sqrt(2 * math.pi) for v in x[:, 0].tolist()]
    assert got[0, 0].abs() < 1e-12  # antithetic draws: the symmetric answer exactly
    assert np.allclose(got[:, 0].numpy(), want, atol=0.02)


def test_the_gaussian_source_is_the_closed_form_on_two_points():
    """y ∈ {u, v}: μ = (u + v)/2, Σ = dd^T with d = (u − v)/2 (biased), so D(x, σ) = μ +
    d d^T(x − μ)/(‖d‖² + σ²)."""
    pts = np.array([[1.0, 2.0], [3.0, -2.0]], dtype=np.float64)
    model = load_denoiser(gaussian=pts, exact_dtype=F64, schedule="ve")
    x = torch.tensor([[0.5, 0.5], [2.0, -1.0]], dtype=F64)
    mu, d = torch.tensor([2.0, 0.0], dtype=F64), torch.tensor([-1.0, 2.0], dtype=F64)
    want = mu + ((x - mu) @ d)[:, None] * d / (d @ d + 0.8**2)
    assert torch.allclose(model.denoiser(x, 0.8), want, atol=1e-12)
    per_row = model.denoiser(x, torch.tensor([0.8, 0.8], dtype=F64))
    assert torch.allclose(per_row, want, atol=1e-12)
    images = LinearDenoiser(torch.from_numpy(pts).reshape(2, 1, 1, 2))
    assert torch.allclose(images(x.reshape(2, 1, 1, 2), 0.8).reshape(2, 2), want, atol=1e-12)


def test_r2_of_a_denoiser_against_itself_and_a_scaled_copy():
    train = _images(6, 1, 3, 3)
    held = _images(10, 1, 3, 3, seed=5)
    exact = EmpiricalDenoiser(train)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    same = denoiser_r2(exact, exact, torch.from_numpy(held.numpy()), [0.3, 1.0], gen())
    assert all(row.r2 == 1.0 and row.median_r2 == 1.0 for row in same)
    c = 0.8
    scaled = denoiser_r2(lambda x, s: c * exact(x, s), exact, held, [0.5], gen())[0]
    out = torch.stack([exact(y[None] + 0.5 * n[None], 0.5)[0] for y, n in zip(
        held, torch.randn(held.shape, generator=gen(), dtype=F64))])
    flat = out.reshape(len(out), -1)
    want = 1 - (1 - c) ** 2 * flat.square().sum() / (flat - flat.mean(0)).square().sum()
    assert scaled.r2 == pytest.approx(float(want), abs=1e-10)
    per_image = 1 - (1 - c) ** 2 * flat.square().sum(1) / (
        flat - flat.mean(1, keepdim=True)).square().sum(1)
    assert scaled.median_r2 == pytest.approx(float(per_image.median()), abs=1e-10)
    pooled, med = r2_scores(flat, flat + 1.0)
    assert pooled < 1 and med < 1


def test_each_parameter_changes_its_sources_key():
    train = np.arange(32, dtype=np.float32).reshape(2, 1, 4, 4) / 32
    base = {kind: train_key(train, load_config(TINY, [f"model.kind={kind}"]))
            for kind in ("smoothed", "els", "gaussian", "exact")}
    assert len(set(base.values())) == 4
    for kind, key, value in (("smoothed", "smoothing", 0.2), ("els", "patch", 5),
                             ("els", "equivariant", False)):
        changed = load_config(TINY, [f"model.kind={kind}", f"model.{key}={value}"])
        assert train_key(train, changed) != base[kind], key
    assert ModelConfig().smoothing == 0.1 and ModelConfig().patch == 3  # the CLI's defaults


@pytest.mark.parametrize("sets, message", [
    (["model.kind=smoothed", "model.smoothing=-0.1"], "model.smoothing: -0.1 must be at least 0"),
    (["model.kind=els", "model.patch=4"], "model.patch: 4 must be an odd whole number"),
    (["model.kind=exact", "model.patch=5"], "model.patch: has no effect with model.kind = exact"),
    (["model.kind=gaussian", "model.smoothing=0.3"], "model.smoothing: has no effect"),
])
def test_bad_model_settings_are_one_line_user_errors(sets, message):
    with pytest.raises(UserError, match=message) as err:
        load_config(TINY, sets)
    assert "\n" not in str(err.value)


def test_els_refuses_vectors_and_oversized_patches():
    with pytest.raises(UserError, match=r"needs images \(C, H, W\)"):
        ELSDenoiser(torch.zeros(3, 2), 3)
    with pytest.raises(UserError, match="patch 9 is larger than the image needs: at 7"):
        ELSDenoiser(torch.zeros(3, 1, 4, 4), 9)
    with pytest.raises(UserError, match="odd"):
        ELSDenoiser(torch.zeros(3, 1, 4, 4), 2)
    toy = load_denoiser(gaussian=np.zeros((3, 2), np.float32) + [[0], [1], [2]], schedule="ve")
    assert toy.denoiser(torch.zeros(1, 2), 1.0).shape == (1, 2)  # the Gaussian takes vectors


def test_cli_refuses_bad_source_parameters_before_any_work(tmp_path):
    np.savez(tmp_path / "t.npz", samples=np.zeros((3, 2), np.float32))
    runner = CliRunner()
    cases = (["--els", str(tmp_path / "t.npz")], r"needs images \(C, H, W\)"), (
        ["--exact", str(tmp_path / "t.npz"), "--patch", "3"], "--patch is for --els"), (
        ["--smoothed", str(tmp_path / "t.npz"), "--smoothing", "-1"], "--smoothing: -1.0 must")
    for args, message in cases:
        out = tmp_path / "o"
        result = runner.invoke(cli, ["generate", *args, "--n", "2", "--out", str(out)])
        assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, \
            result.output
        assert pytest.importorskip("re").search(message, result.output), result.output
        assert not out.exists() or not any(out.iterdir())


def test_r2_cli_builds_the_references_with_the_parameters_given(tmp_path):
    """--smoothing with any compared model sets the smoothed reference: its row at
    smoothing 0 equals the exact reference's row; without --smoothing (0.1) it differs."""
    train, held = _images(5, 1, 4, 4).float().numpy(), _images(6, 1, 4, 4, seed=2).float().numpy()
    np.savez(tmp_path / "t.npz", samples=train)
    np.savez(tmp_path / "h.npz", samples=held)
    rows = {}
    for smoothing in ("0", None):
        extra = [] if smoothing is None else ["--smoothing", smoothing]
        result = CliRunner().invoke(cli, ["r2", "--gaussian", str(tmp_path / "t.npz"), *extra,
                                          "--train", str(tmp_path / "t.npz"), "--heldout",
                                          str(tmp_path / "h.npz"), "--sigma", "0.4"])
        assert result.exit_code == 0, result.output
        table = dict(line.split()[1:3] for line in result.output.splitlines()
                     if line.startswith("0.4"))
        rows[smoothing] = table
    assert rows["0"]["smoothed"] == rows["0"]["exact"]
    assert rows[None]["smoothed"] != rows[None]["exact"]


def test_smoothed_mean_approaches_its_expectation_with_many_draws():
    """Two points y = ±1 (1-D), σ → 0: D_K is the sign step, so the expectation
    E_ε[D_K(x + λε)] = 2Φ(x/λ) − 1 with λ = s(1 + σ); 20,000 antithetic pairs reach it
    within 4 standard errors, 16 pairs leave D piecewise constant near the midpoint."""
    train = torch.tensor([[-1.0], [1.0]], dtype=F64)
    s, sigma = 0.5, 1e-3
    x = torch.linspace(-0.6, 0.6, 13, dtype=F64)[:, None]
    lam = s * (1 + sigma)
    want = torch.erf(x / (lam * math.sqrt(2)))  # 2Φ(x/λ) − 1
    many = SmoothedDenoiser(train, s, draws=20_000)(x, sigma)
    assert torch.allclose(many, want, atol=4 / math.sqrt(40_000))
    few = SmoothedDenoiser(train, s, draws=16)(x + 1e-4, sigma)
    assert torch.equal(few, SmoothedDenoiser(train, s, draws=16)(x, sigma))  # steps of 1/16


def test_draws_reach_the_smoothed_key_and_are_checked():
    train = np.arange(32, dtype=np.float32).reshape(2, 1, 4, 4) / 32
    keys = {d: train_key(train, load_config(TINY, ["model.kind=smoothed", f"model.draws={d}"]))
            for d in (16, 64)}
    assert keys[16] != keys[64]
    with pytest.raises(UserError, match="model.draws: must be at least 1"):
        load_config(TINY, ["model.kind=smoothed", "model.draws=0"])
    with pytest.raises(UserError, match="model.draws: has no effect"):
        load_config(TINY, ["model.kind=exact", "model.draws=4"])
