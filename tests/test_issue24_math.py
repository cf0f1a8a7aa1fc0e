"""Issue #24: the math moved out of orchestrators and the CLI, against known answers.

The ring radius (memory/energy) against a brute-force minimum of the continuum energy; the
continuum's score field against autograd; per-label quartiles (metrics/stats) against
numpy.percentile; the one exact denoiser (memory/energy.empirical_denoise, which
EmpiricalDenoiser uses) against the softmax-weighted mean written out in float64; the
network denoisers as their parameterization's D to the bit; the authors' U-Net under nets/.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from memgen.diffusion import reference
from memgen.diffusion.denoisers import (EmpiricalDenoiser, EpsDenoiser, NetworkDenoiser,
                                        ScoreDenoiser)
from memgen.diffusion.nets import reference_unet
from memgen.diffusion.parameterization import EpsPrediction, ScorePrediction
from memgen.diffusion.schedules import VESchedule, VPSchedule
from memgen.memory import energy as E
from memgen.metrics.rules import LABEL_NAMES
from memgen.metrics.stats import label_confusion, label_groups, quartiles_by_label

F64 = torch.float64
SRC = Path(__file__).parents[1] / "src" / "memgen"


# ------------------------------------------------------------------- circle continuum


@pytest.mark.parametrize("gamma", [1.5, 3.0, 20.0, 200.0])
def test_ring_radius_is_the_brute_force_minimum_of_the_continuum_energy(gamma):
    R = torch.linspace(0, 1.2, 1_200_001, dtype=F64)  # spacing 1e-6
    brute = float(R[E.circle_energy(R, gamma).argmin()])
    radius = E.circle_ring_radius(gamma)
    assert radius == pytest.approx(brute, abs=2e-6)
    assert abs(float(E.circle_radial_score(torch.tensor(radius, dtype=F64), gamma))) < 1e-12


def test_ring_radius_large_gamma_asymptote_and_the_origin_below_one():
    # I1/I0(z) = 1 − 1/(2z) + O(z⁻²): R* = 1 − 1/(4γ) + O(γ⁻²)
    gamma = 1e4
    assert E.circle_ring_radius(gamma) == pytest.approx(1 - 1 / (4 * gamma), abs=1e-7)
    assert E.circle_ring_radius(0.5) == 0.0 and E.circle_ring_radius(1.0) == 0.0


def test_circle_score_is_minus_the_gradient_of_the_continuum_energy():
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(50, 2, generator=g, dtype=F64) - 0.5) * 3
    x.requires_grad_(True)
    energy = E.circle_energy(x.norm(dim=1), 7.0).sum()
    (grad,) = torch.autograd.grad(energy, x)
    torch.testing.assert_close(E.circle_score(x.detach(), 7.0), -grad, rtol=1e-12, atol=1e-12)
    assert torch.equal(E.circle_score(torch.zeros(1, 2, dtype=F64), 7.0),
                       torch.zeros(1, 2, dtype=F64))


# ---------------------------------------------------------------- per-label summaries


def test_quartiles_by_label_match_numpy_percentile_over_finite_values():
    rng = np.random.default_rng(3)
    values = rng.standard_normal(40)
    values[[1, 7, 30]] = [np.nan, np.inf, -np.inf]
    labels = rng.integers(0, 2, size=40)  # no generalized sample: an empty group
    table = quartiles_by_label(values, labels)
    assert list(table) == list(LABEL_NAMES)
    for code, name in enumerate(LABEL_NAMES):
        v = values[labels == code]
        finite = v[np.isfinite(v)]
        row = table[name]
        assert (row["n"], row["finite"]) == (len(v), len(finite))
        if len(finite):
            want = np.percentile(finite, [25, 50, 75])
            assert [row["q25"], row["median"], row["q75"]] == pytest.approx(want, abs=0)
        else:
            assert row["q25"] is row["median"] is row["q75"] is None
    whole = quartiles_by_label(np.array([4.0, 1.0, 3.0, 2.0]), None)
    assert whole == {"all": {"n": 4, "finite": 4, "q25": 1.75, "median": 2.5, "q75": 3.25}}


def test_label_groups_and_confusion_count_every_sample_once():
    rng = np.random.default_rng(5)
    truth, labels = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    groups = label_groups(np.arange(200), labels)
    assert sorted(np.concatenate(list(groups.values())).tolist()) == list(range(200))
    matrix = label_confusion(truth, labels)
    want = np.array([[np.sum((truth == i) & (labels == j)) for j in range(3)]
                     for i in range(3)])
    np.testing.assert_array_equal(matrix, want)
    assert matrix.dtype == np.int64 and matrix.sum() == 200


# ------------------------------------------------------------------ the exact denoiser


def _brute_denoise(x, y, sigma):
    """Σ_i w_i y_i, w = exp(−‖x − y_i‖²/(2σ²)) / Σ, written out in float64 per query."""
    out = []
    for row, s in zip(x, sigma):
        logit = -((row - y) ** 2).sum(1) / (2 * s**2)
        w = torch.exp(logit - logit.max())
        out.append((w / w.sum()) @ y)
    return torch.stack(out)


def test_the_exact_denoiser_is_the_softmax_weighted_mean_in_float64():
    g = torch.Generator().manual_seed(1)
    y = torch.randn(30, 6, generator=g, dtype=F64) + 4
    x = torch.randn(11, 6, generator=g, dtype=F64) * 2 + 4
    sigma = torch.rand(11, generator=g, dtype=F64) * 2 + 0.1
    want = _brute_denoise(x, y, sigma)
    torch.testing.assert_close(E.empirical_denoise(x, y, sigma), want, rtol=1e-12, atol=1e-12)
    one = _brute_denoise(x, y, torch.full((11,), 0.4, dtype=F64))
    torch.testing.assert_close(E.empirical_denoise(x, y, 0.4), one, rtol=1e-12, atol=1e-12)
    scaled = _brute_denoise(x, 0.7 * y, torch.full((11,), 0.4, dtype=F64))
    torch.testing.assert_close(E.empirical_denoise(x, y, 0.4, 0.7), scaled, rtol=1e-12,
                               atol=1e-12)
    # blocks of queries agree to rounding (not to the bit: the GEMM sees other shapes);
    # EmpiricalDenoiser is the same function on samples of any shape, to the bit
    blocks = E.empirical_denoise(x, y, sigma, memory_budget=8 * 30 * 4)  # 4 rows a block
    torch.testing.assert_close(blocks, want, rtol=1e-12, atol=1e-12)
    den = EmpiricalDenoiser(y.view(30, 2, 3), memory_budget=8 * 30 * 4)
    assert torch.equal(den(x.view(11, 2, 3), sigma), blocks.view(11, 2, 3))


# -------------------------------------------------------------- the network denoisers


def _net(x, t):
    return torch.tanh(x) * (1 + t.view(-1, *([1] * (x.ndim - 1))) / 1000)


def test_network_denoisers_are_their_parameterizations_d_to_the_bit():
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(2))
    vp, ve = VPSchedule(), VESchedule()
    for den, param, sigma in ((EpsDenoiser(_net, vp), EpsPrediction(vp), 2.5),
                              (ScoreDenoiser(_net, ve), ScorePrediction(ve), 0.6)):
        assert isinstance(den, NetworkDenoiser) and den.schedule is den.parameterization.schedule
        assert torch.equal(den(x, sigma), param.denoise(_net, x, sigma))
        ladder = [sigma, sigma / 2]
        for step, want in zip(den.at_levels(ladder, x), param.at_levels(_net, ladder, x)):
            assert torch.equal(step(x), want(x))
    clipped = EpsDenoiser(_net, vp, clip=True)
    assert torch.equal(clipped(x * 50, 80.0), EpsPrediction(vp).denoise(_net, x * 50, 80.0)
                       .clamp(-1, 1))
    assert clipped.residuals_at_levels([1.0], x) is None
    # the attributes a fingerprint walks (identity.denoiser_sha256), as before the refactor
    assert sorted(vars(clipped)) == ["clip", "net", "parameterization", "schedule"]
    assert sorted(vars(ScoreDenoiser(_net, ve))) == ["net", "parameterization", "schedule"]


# ------------------------------------------------------------------ the authors' U-Net


def test_the_authors_unet_lives_under_nets_and_both_files_stay_short():
    assert reference.ReferenceUNet is reference_unet.ReferenceUNet
    assert reference.ReferenceConfig is reference_unet.ReferenceConfig
    for path in (SRC / "diffusion" / "reference.py",
                 SRC / "diffusion" / "nets" / "reference_unet.py"):
        assert len(path.read_text().splitlines()) < 500, path
    assert "class ReferenceUNet" not in (SRC / "diffusion" / "reference.py").read_text()
