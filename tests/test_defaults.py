"""Modelling defaults made explicit: the starting prior, clipping x̂₀, and cache keys that
stay put while the new options are unset.

The analytic case throughout: data y ~ N(μ, Σ), whose exact denoiser is linear,
D(x, σ) = μ + Σ(Σ + σ² I)⁻¹(x − μ) (``GaussianDenoiser``). Its PF-ODE from level σ₀ to σ
maps x − μ ↦ (Σ + σ² I)^½ (Σ + σ₀² I)^-½ (x − μ), so
- from the forward prior N(μ, Σ + σ₀² I) it ends in N(μ, Σ) (up to the ladder's σ_min);
- from the standard VE start N(0, σ₀² I) it ends in N((I − M)μ, σ₀² M²) with
  M = Σ^½ (Σ + σ₀² I)^-½: covariance σ₀² Σ(Σ + σ₀² I)⁻¹ — for the unit circle's moments
  (Σ = I/2, σ₀ = 1) a variance of 1/3 per axis instead of 1/2.
"""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from memgen.diffusion.denoisers import EpsDenoiser, GaussianDenoiser
from memgen.diffusion.generate import GenerateConfig, denoised_clip, generate, start_prior
from memgen.diffusion.ladders import ve_sigmas
from memgen.diffusion.priors import forward_prior
from memgen.diffusion.samplers import SAMPLERS, sample_ddim, sample_heun
from memgen.diffusion.schedules import VESchedule, VPSchedule

F64 = torch.float64
MU = torch.tensor([0.3, -0.2], dtype=F64)
COV = torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=F64)
N = 4000
CONFIGS = Path(__file__).resolve().parents[1] / "configs"

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def _matrix_power(a: torch.Tensor, p: float) -> torch.Tensor:
    lam, vec = torch.linalg.eigh(a)
    return (vec * lam**p) @ vec.T


def _training_set(mean=MU, cov=COV, K=500) -> np.ndarray:
    """K points whose empirical mean and covariance (normalised by K) are exactly mean, cov."""
    z = torch.randn(K, len(mean), generator=torch.Generator().manual_seed(0), dtype=F64)
    z = z - z.mean(0)
    z = z @ _matrix_power(z.T @ z / K, -0.5) @ _matrix_power(cov, 0.5)
    return (z + mean).numpy()


def _tolerance(cov, n=N):
    """4 standard errors of the sample mean and covariance of n draws of N(·, cov)."""
    var = torch.diagonal(cov)
    return 4 * (var / n).sqrt(), 4 * ((var[:, None] * var[None] + cov.square()) / n).sqrt()


def _samples(tmp_path, schedule, mean=MU, cov=COV, **options) -> torch.Tensor:
    config = GenerateConfig(**{"n": N, "seed": 1, "clip": False, "final_denoise": True,
                               "batch_size": 1000, "shard_size": N, **options})
    path = generate(GaussianDenoiser(mean, cov), (2,), schedule, config, tmp_path,
                    data=_training_set(mean, cov), dtype=F64, progress=False)
    return torch.from_numpy(np.load(path, allow_pickle=False)["samples"]).double()


# ------------------------------------------------------------------------------ priors


def test_forward_prior_has_the_forward_moments():
    data = torch.from_numpy(_training_set())
    for d in (data, data[:2]):  # K > D: eigendecomposition; K ≤ D: the centred data
        prior = forward_prior(d, 1.0)
        centred = d - d.mean(0)
        torch.testing.assert_close(prior.mean, d.mean(0))
        torch.testing.assert_close(prior.factor.T @ prior.factor, centred.T @ centred / len(d))
    x = forward_prior(data, 2.0).sample((N, 2), torch.Generator().manual_seed(3), dtype=F64)
    target = COV + 4.0 * torch.eye(2, dtype=F64)
    tol_mean, tol_cov = _tolerance(target)
    assert ((x.mean(0) - MU).abs() <= tol_mean).all()
    assert ((torch.cov(x.T) - target).abs() <= tol_cov).all()


@pytest.mark.parametrize("sampler, steps", [("heun", 100), ("ddim", 200),
                                            ("euler_maruyama", 1000), ("ddpm", 1000)])
def test_forward_prior_reproduces_the_data_law_on_the_ve_toy_schedule(tmp_path, sampler,
                                                                      steps):
    """σ₀ = 1 (the toy VE SDE): started from the forward law, every sampler ends in N(μ, Σ)."""
    out = _samples(tmp_path, VESchedule(), sampler=sampler, steps=steps, prior="forward")
    tol_mean, tol_cov = _tolerance(COV)
    assert ((out.mean(0) - MU).abs() <= tol_mean).all(), out.mean(0)
    assert ((torch.cov(out.T) - COV).abs() <= tol_cov).all(), torch.cov(out.T)


def test_standard_ve_start_gives_the_known_bias(tmp_path):
    """From N(0, σ₀² I) the PF-ODE ends in N((I − M)μ, σ₀² M²), M = Σ^½(Σ + σ₀² I)^-½."""
    out = _samples(tmp_path, VESchedule(), sampler="heun", steps=100)
    m = _matrix_power(COV, 0.5) @ _matrix_power(COV + torch.eye(2, dtype=F64), -0.5)
    mean, cov = MU - m @ MU, m @ m.T
    tol_mean, tol_cov = _tolerance(cov)
    assert ((out.mean(0) - mean).abs() <= tol_mean).all(), (out.mean(0), mean)
    assert ((torch.cov(out.T) - cov).abs() <= tol_cov).all(), (torch.cov(out.T), cov)
    # measurably wrong: the spread is ~35% short of the data's, far beyond sampling error
    assert ((torch.cov(out.T) - COV).abs() > 3 * _tolerance(COV)[1]).any()
    assert torch.diagonal(torch.cov(out.T)).sum() < 0.7 * torch.diagonal(COV).sum()


def test_unit_circle_moments_give_one_third_instead_of_one_half(tmp_path):
    circle = torch.eye(2, dtype=F64) / 2  # x = (cos θ, sin θ): mean 0, covariance I/2
    zero = torch.zeros(2, dtype=F64)
    assert start_prior(VESchedule(), 1.0).std == 1.0  # the standard start: std 1 ...
    prior = start_prior(VESchedule(), 1.0, "forward", _training_set(zero, circle))
    torch.testing.assert_close(prior.factor.T @ prior.factor + torch.eye(2, dtype=F64),
                               1.5 * torch.eye(2, dtype=F64))  # ... the forward law: √1.5
    for name, variance in (("standard", 1 / 3), ("forward", 1 / 2)):
        out = _samples(tmp_path / name, VESchedule(), zero, circle, sampler="heun", steps=100,
                       prior=name)
        assert torch.diagonal(torch.cov(out.T)) == pytest.approx([variance] * 2, abs=0.025)


def test_vp_priors_agree_to_order_one_over_sigma_max(tmp_path):
    """VP: σ₀ = σ_{T−1} ≈ 157, so both starts end in N(μ, Σ), sample by sample within
    √(λ_max)·|start difference|/σ₀ of each other."""
    outs = [_samples(tmp_path / p, VPSchedule(), sampler="heun", steps=50, prior=p)
            for p in ("standard", "forward")]
    tol_mean, tol_cov = _tolerance(COV)
    for out in outs:
        assert ((out.mean(0) - MU).abs() <= tol_mean).all()
        assert ((torch.cov(out.T) - COV).abs() <= tol_cov).all()
    assert (outs[0] - outs[1]).abs().max() < 0.03


def test_forward_prior_needs_the_training_set(tmp_path):
    config = GenerateConfig(n=2, prior="forward")
    with pytest.raises(ValueError, match="training set"):
        generate(GaussianDenoiser(MU, COV), (2,), VESchedule(), config, tmp_path, progress=False)
    with pytest.raises(ValueError, match="unknown prior"):
        GenerateConfig(n=2, prior="uniform")
    with pytest.raises(ValueError, match="clip_range"):
        GenerateConfig(n=2, clip_range=(1.0, -1.0))


# ---------------------------------------------------------------------------- clipping

OFF = torch.tensor([1.5, -1.3], dtype=F64)  # a law whose x̂₀ leaves [−1, 1]
SMALL = torch.tensor([[0.04, 0.01], [0.01, 0.02]], dtype=F64)


@pytest.mark.parametrize("sampler, steps, atol", [(sample_heun, 50, 1e-3),  # 2nd order
                                                  (sample_ddim, 200, 5e-3)])  # Euler
def test_clipping_changes_the_ode_and_no_clipping_is_the_exact_flow(sampler, steps, atol):
    sigmas = ve_sigmas(2.0, 0.05, steps)
    s0, s1 = float(sigmas[0]), float(sigmas[-1])
    eye = torch.eye(2, dtype=F64)
    x0 = OFF + torch.randn(500, 2, generator=torch.Generator().manual_seed(4), dtype=F64) \
        @ _matrix_power(SMALL + s0**2 * eye, 0.5)
    den = GaussianDenoiser(OFF, SMALL)
    flow = _matrix_power(SMALL + s1**2 * eye, 0.5) @ _matrix_power(SMALL + s0**2 * eye, -0.5)
    exact = OFF + (x0 - OFF) @ flow.T
    free = sampler(den, x0, sigmas)
    torch.testing.assert_close(free, exact, rtol=0, atol=atol)
    clipped = sampler(den, x0, sigmas, clip=(-1.0, 1.0))
    assert (clipped - free).abs().mean() > 0.2  # integrates another field
    assert (clipped.mean(0) - OFF).abs().max() > 0.2  # and misses the data's mean
    torch.testing.assert_close(sampler(den, x0, sigmas, clip=None), free, rtol=0, atol=0)


def test_generate_clips_only_where_asked(tmp_path):
    """clip_denoised None: off for a non-ε denoiser; True: samples end inside the range."""
    runs = {}
    for flag in (None, False, True):
        runs[flag] = _samples(tmp_path / str(flag), VESchedule(), OFF, SMALL, sampler="heun",
                              steps=50, prior="forward", clip_denoised=flag)
    torch.testing.assert_close(runs[None], runs[False], rtol=0, atol=0)
    assert runs[False].max(0).values[0] > 1.2 and runs[True].abs().max() <= 1.0
    narrow = GenerateConfig(n=1, clip_denoised=True, clip_range=(-0.5, 0.5))
    assert denoised_clip(GaussianDenoiser(OFF, SMALL), narrow) == (-0.5, 0.5)


def test_eps_networks_keep_clipping_by_default():
    """Today's behaviour: an ε-network's x̂₀ is clipped while sampling (as DDPM does), the
    field itself is not; other denoisers are never clipped unless asked."""
    eps = EpsDenoiser(lambda x, t: -torch.ones_like(x), VPSchedule())  # D(x, σ) = x + σ
    x = torch.zeros(1, 2)
    assert eps(x, 100.0).abs().max() == 100.0  # the raw field
    assert EpsDenoiser(eps.net, VPSchedule(), clip=True)(x, 100.0).abs().max() == 1.0
    assert denoised_clip(eps, GenerateConfig(n=1)) == (-1.0, 1.0)
    assert denoised_clip(eps, GenerateConfig(n=1, clip_denoised=False)) is None
    assert denoised_clip(GaussianDenoiser(MU, COV), GenerateConfig(n=1)) is None


# -------------------------------------------------------------------------- cache keys


def _config(name, *overrides):
    from memgen.experiments.config import load_config

    return load_config(CONFIGS / f"{name}.yaml", overrides)


@pytest.mark.parametrize("name, sampler", [("tiny", "euler_maruyama"), ("toy2d", "euler_maruyama"),
                                           ("images-cpu", "ddpm"), ("reference-fmnist", "ddpm")])
def test_a_samplers_revision_makes_new_generate_keys(name, sampler, monkeypatch):
    """Sample sets of a sampler whose arithmetic changed (its spec's revision) get new keys,
    whether the sampler is named or the schedule's default; the others keep theirs."""
    import memgen.experiments.stages as sweep

    config = _config(name)
    assert sweep.sampler_name(config) == sampler
    for spec in list(SAMPLERS.values()):
        monkeypatch.setitem(SAMPLERS, spec.name, dataclasses.replace(spec, revision=None))
    key = sweep.generate_key("eval", 8, 1, "tk", None, config)
    first = dict(SAMPLERS)
    for other in ("ddpm", "ddim", "heun", "euler_maruyama"):
        SAMPLERS.update(first)
        SAMPLERS[other] = dataclasses.replace(first[other], revision=7)
        changed = sweep.generate_key("eval", 8, 1, "tk", None, config) != key
        assert changed == (other == sampler), other


@pytest.mark.parametrize("name", ["toy2d", "images-cpu"])
@pytest.mark.parametrize("field, override, value", [
    ("ema_warmup", "train.ema_warmup=false", False),
    ("compile", "train.compile=reduce-overhead", "reduce-overhead"),
])
def test_late_train_fields_make_a_new_train_key_and_reach_training(name, field, override,
                                                                   value):
    """A train field added late (ema_warmup, compile) is keyed like every other (no shim
    for caches made before it existed: STAGE_VERSION 4 recomputes them) and reaches
    training."""
    import memgen.experiments.stages as sweep

    train = np.zeros((2, 2), dtype=np.float32)
    assert sweep.train_key(train, _config(name, override)) != sweep.train_key(train,
                                                                               _config(name))
    assert getattr(sweep.train_config(_config(name, override)), field) == value


def test_compile_defaults_to_none_and_unknown_modes_are_refused():
    import memgen.experiments.stages as sweep

    assert sweep.train_config(_config("toy2d")).compile == "none"
    with pytest.raises(ValueError, match="train.compile"):
        _config("toy2d", "train.compile=fast")


def test_sweep_passes_the_options_to_generation(tmp_path, monkeypatch):
    import memgen.experiments.stages as G
    from memgen.experiments.stages import generate_stage

    seen = []
    real = G.generate
    monkeypatch.setattr(G, "generate", lambda *a, **k: seen.append((a[3], k)) or real(*a, **k))
    train = _training_set().astype(np.float32)
    config = _config("tiny", "sample.prior=forward", "sample.clip_denoised=true",
                     "sample.clip_range=[-0.5, 0.5]", "sample.final_denoise=true")
    _, path = generate_stage(tmp_path, "eval", 8, 1, "tk", None, train, config, False)
    gen, kwargs = seen[0]
    assert (gen.prior, gen.clip_denoised, gen.clip_range) == ("forward", True, (-0.5, 0.5))
    assert kwargs["data"] is train
    assert np.abs(np.load(path, allow_pickle=False)["samples"]).max() <= 0.5
