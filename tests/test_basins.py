"""Basins against known answers: two 1-D patterns (P(σ) = Φ(a/σ), σ* = a/Φ⁻¹(p), and the exact
order statistic of the trials' own noise), direct sampler runs on each row's own ladder, the
exact energy difference −log p_σ, and dense Hessians (empirical_hessian, jacobians)."""

import math

import pytest
import torch
from scipy.stats import norm

from memgen.diffusion.denoisers import EmpiricalDenoiser, EpsDenoiser
from memgen.diffusion.rng import StackedGenerator
from memgen.diffusion.samplers import SAMPLERS, get_sampler
from memgen.diffusion.schedules import VESchedule, VPSchedule
from memgen.memory import energy as E
from memgen.probes.curvature import denoiser_jacobian, hessian, hessian_eigsh, hessian_spectrum
from memgen.probes.recovery import (RecoveryConfig, ball_log_volume, bisection_rounds,
                                    critical_time, recovery_probability, trial_noise)
from memgen.probes.relative_energy import relative_energy

F64 = torch.float64
A = 1.0  # the two patterns sit at ±A
TWO = torch.tensor([[A], [-A]], dtype=F64)  # (2, 1)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def _random_patterns(n, d, seed):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


# ------------------------------------------------------------------------- recovery


def test_recovery_probability_two_patterns_is_phi():
    """PF-ODE (DDIM) keeps the sign of x in 1-D (D(x) = A tanh(Ax/σ²)), so trial j is recovered
    iff x0 + σ n_j stays on x0's side: exactly the same-side share of the trials' own noise,
    and Φ(A/σ) in expectation (binomial tolerance, 4 standard errors)."""
    sigmas = torch.tensor([0.4, 0.8, 1.5, 3.0], dtype=F64)
    config = RecoveryConfig(n_trials=3000, steps=30)
    rec = recovery_probability(EmpiricalDenoiser(TWO), TWO, sigmas, config)
    assert rec.probability.shape == (2, 4) and rec.distance.shape == (2, 4, 3000)
    noise = trial_noise(TWO, 3000, config.seed)[:, None, :, 0]  # (2, 1, n)
    same_side = (TWO[:, :, None] + sigmas[None, :, None] * noise) * TWO[:, :, None] > 0
    assert torch.equal(rec.recovered, same_side)
    assert rec.distance[rec.recovered].max() < 1e-6  # recovered trials land on the pattern
    phi = torch.as_tensor(norm.cdf(A / sigmas.numpy()), dtype=F64)
    se = (phi * (1 - phi) / config.n_trials).sqrt()
    assert ((rec.probability - phi).abs() <= 4 * se).all()


def test_critical_sigma_bisection_two_patterns():
    """σ* = sup{σ : #{j : A + σ s n_j on x0's side} ≥ ⌈pn⌉} = A / m_(k), m = −s·n sorted, is
    bracketed to rtol; it estimates A/Φ⁻¹(p) within 4 standard errors of the p-quantile."""
    n, p, rtol = 2000, 0.9, 1e-3
    config = RecoveryConfig(n_trials=n, p=p, steps=30)
    schedule = VESchedule(sigma_max=20.0)
    crit = critical_time(EmpiricalDenoiser(TWO), TWO, 0.05, 20.0, config, rtol=rtol,
                         schedule=schedule)
    noise = trial_noise(TWO, n, config.seed)[..., 0]  # (2, n)
    m = (-noise * TWO.sign()).sort(dim=1).values
    k = math.ceil(p * n - 1e-9)  # trials needed: 1800
    assert config.needed() == k and RecoveryConfig(n_trials=10, p=0.7).needed() == 7
    exact = A / m[:, k - 1]
    assert (crit.censored == 0).all() and crit.rounds == bisection_rounds(0.05, 20.0, rtol)
    assert (crit.sigma <= exact).all() and (exact <= crit.sigma_upper).all()
    assert (crit.sigma_upper / crit.sigma <= 1 + rtol).all()
    z = norm.ppf(p)
    rel_se = math.sqrt(p * (1 - p) / n) / norm.pdf(z) / z  # delta method for A/quantile
    assert ((crit.sigma * z / A - 1).abs() <= 4 * rel_se).all()
    # radius = σ* mean_j |n_j|; the 1-ball's volume is 2r; t = (σ/σ_max)² for the VE schedule
    torch.testing.assert_close(crit.radius, crit.sigma * noise.abs().mean(1))
    torch.testing.assert_close(crit.log_volume, (2 * crit.radius).log())
    torch.testing.assert_close(crit.t, (crit.sigma / 20.0) ** 2)


def test_critical_time_through_a_vp_eps_network():
    """An ε-network that is the exact model seen through VP coordinates (ᾱ = 1/(1 + σ²)):
    the same σ* as the exact denoiser, and t* = the schedule's time of σ*."""
    schedule, exact = VPSchedule(), EmpiricalDenoiser(TWO)

    def eps_net(x_vp, t):  # ε̂ = (x − D(x, σ))/σ at x = x_vp/√ᾱ, σ = σ_t
        sigma = schedule.sigma(t.double()).to(x_vp).view(-1, 1)
        x = x_vp * (1 + sigma.square()).sqrt()
        return (x - exact(x, sigma.view(-1))) / sigma

    config = RecoveryConfig(n_trials=200, steps=20, rel_min=0.25)
    via_net = critical_time(EpsDenoiser(eps_net, schedule, clip=False), TWO, 0.1, 10.0, config,
                            rtol=1e-3, schedule=schedule)
    direct = critical_time(exact, TWO, 0.1, 10.0, config, rtol=1e-3)
    torch.testing.assert_close(via_net.sigma, direct.sigma)
    torch.testing.assert_close(via_net.t, schedule.t_from_sigma(direct.sigma))
    assert (via_net.censored == 0).all()


def test_critical_time_censoring():
    config = RecoveryConfig(n_trials=50, steps=10)
    den = EmpiricalDenoiser(TWO)
    above = critical_time(den, TWO, 0.01, 0.1, config)  # Φ(10) ≈ 1: every level passes
    assert (above.censored == 1).all() and (above.sigma == 0.1).all()
    assert torch.isinf(above.sigma_upper).all()
    below = critical_time(den, TWO, 5.0, 10.0, config, schedule=VESchedule(sigma_max=10.0))
    assert (below.censored == -1).all() and (below.sigma == 0).all()  # Φ(0.2) ≈ 0.58 < 0.9
    assert (below.sigma_upper == 5.0).all() and torch.isinf(below.log_volume).all()
    assert torch.isnan(below.t).all()


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_rows_run_on_their_own_ladder(name):
    """One batched call at two levels equals the sampler run directly on each row's ladder
    σ·u with the documented noise streams (the rescaling trick is exact for every sampler)."""
    patterns = _random_patterns(5, 3, seed=1)
    den = EmpiricalDenoiser(patterns)
    x0 = patterns[:2] + 0.05
    config = RecoveryConfig(n_trials=3, sampler=name, steps=6, delta=0.05, seed=4)
    levels = torch.tensor([[0.3, 0.9], [0.5, 1.7]], dtype=F64)
    rec = recovery_probability(den, x0, levels, config, sample_ids=[10, 11])
    noise = trial_noise(x0, 3, seed=4, sample_ids=[10, 11])
    for b in range(2):
        for g in range(2):
            s = float(levels[b, g])
            gen = StackedGenerator([(4, 10 + b, j, 2) for j in range(3)])
            x_hat = get_sampler(name)(den, x0[b] + s * noise[b], s * config.ladder(),
                                      generator=gen)
            dist = (x_hat - x0[b]).norm(dim=-1) / math.sqrt(3)
            torch.testing.assert_close(rec.distance[b, g], dist, rtol=1e-9, atol=1e-9)


def test_results_never_depend_on_batching():
    patterns = _random_patterns(6, 4, seed=2)
    den, x0 = EmpiricalDenoiser(patterns), patterns[:3]
    config = RecoveryConfig(n_trials=8, sampler="ddpm", steps=8, p=0.75)
    both = critical_time(den, x0, 0.1, 3.0, config, rtol=0.05, chunk=7)
    for i in range(3):
        one = critical_time(den, x0[i:i + 1], 0.1, 3.0, config, rtol=0.05, sample_ids=[i])
        assert float(one.sigma) == float(both.sigma[i])
        assert float(one.radius) == float(both.radius[i])


def test_recovery_validation():
    den = EmpiricalDenoiser(TWO)
    for bad in (dict(p=0.0), dict(p=1.5), dict(n_trials=0), dict(metric="linf"),
                dict(sampler="nope"), dict(steps=0), dict(rel_min=0.0), dict(delta=-1.0)):
        with pytest.raises(ValueError):
            RecoveryConfig(**bad)
    with pytest.raises(ValueError, match="finite"):
        recovery_probability(den, torch.tensor([[math.nan]], dtype=F64), [0.5])
    with pytest.raises(ValueError, match=r"\(B, \.\.\.\)"):
        recovery_probability(den, torch.ones(3, dtype=F64), [0.5])
    with pytest.raises(ValueError, match="positive"):
        recovery_probability(den, TWO, [0.5, -1.0])
    with pytest.raises(ValueError, match="sigmas must be"):
        recovery_probability(den, TWO, torch.ones(3, 2))
    with pytest.raises(ValueError, match="sigma"):
        critical_time(den, TWO, 0.0, 1.0)
    with pytest.raises(ValueError, match="sigma_lo < sigma_hi"):
        critical_time(den, TWO, 2.0, 1.0)
    with pytest.raises(ValueError, match="outside the schedule"):
        critical_time(den, TWO, 0.1, 1.0, schedule=VPSchedule())  # 0.1 · 1e-2 < σ_0 ≈ 0.01
    with pytest.raises(ValueError, match="sample_ids"):
        recovery_probability(den, TWO, [0.5], sample_ids=[0])


def test_ball_log_volume():
    r = torch.tensor([0.5, 2.0], dtype=F64)
    torch.testing.assert_close(ball_log_volume(r, 2), (math.pi * r**2).log())
    torch.testing.assert_close(ball_log_volume(r, 3), (4 / 3 * math.pi * r**3).log())


# ------------------------------------------------------------------ relative energy


@pytest.mark.parametrize("order, rtol", [(16, 1e-10), (3, 1e-4)])
def test_relative_energy_equals_exact_energy_difference(order, rtol):
    """Exact denoiser: ΔE = −log p_σ(x_ref) + log p_σ(x); the error estimate bounds the error."""
    gen = torch.Generator().manual_seed(3)
    patterns = torch.randn(7, 6, generator=gen, dtype=F64)  # data shape (2, 3), D = 6
    x = 1.5 * torch.randn(5, 6, generator=gen, dtype=F64)
    x_ref = patterns[:5] + 0.1 * torch.randn(5, 6, generator=gen, dtype=F64)
    sigma = 0.6
    res = relative_energy(EmpiricalDenoiser(patterns.view(7, 2, 3)), x.view(5, 2, 3),
                          x_ref.view(5, 2, 3), sigma, rtol=rtol, order=order)
    e_x, e_ref = E.empirical_energy(x, patterns, sigma), E.empirical_energy(x_ref, patterns, sigma)
    exact = e_ref - e_x
    actual = (res.delta - exact).abs()
    assert res.converged.all() and (res.panels >= 2).all()
    assert (actual <= res.error + 1e-12 * (e_x.abs() + e_ref.abs())).all()
    assert (actual <= max(rtol, 1e-9) * exact.abs()).all()


def test_relative_energy_validation():
    den = EmpiricalDenoiser(TWO)
    with pytest.raises(ValueError, match="one shape"):
        relative_energy(den, TWO, TWO[:1], 0.5)
    with pytest.raises(ValueError, match="sigma"):
        relative_energy(den, TWO, TWO, 0.0)
    with pytest.raises(ValueError, match="order"):
        relative_energy(den, TWO, TWO, 0.5, order=0)


# ------------------------------------------------------------------------ curvature


def test_dense_spectrum_equals_empirical_hessian():
    patterns = _random_patterns(4, 2, seed=5)
    x = torch.cat([patterns[:2] + 0.05, torch.zeros(1, 2, dtype=F64)])  # near memories, centre
    sigma = 0.7
    spec = hessian_spectrum(EmpiricalDenoiser(patterns), x, sigma)
    ref = E.empirical_hessian(x, patterns, sigma)
    torch.testing.assert_close(spec.eigenvalues, torch.linalg.eigvalsh(ref), rtol=1e-10,
                               atol=1e-10)
    torch.testing.assert_close(hessian(EmpiricalDenoiser(patterns), x, sigma), ref, rtol=1e-10,
                               atol=1e-10)
    torch.testing.assert_close(spec.trace, ref.diagonal(dim1=-2, dim2=-1).sum(-1))
    assert spec.asymmetry.max() < 1e-12 and spec.mean_curvature.shape == (3,)


@pytest.mark.parametrize("which", ["LA", "SA"])
def test_lanczos_equals_dense_exact_model(which):
    """N = 40 anisotropic patterns in D = 20 at σ = 1.5: a spread spectrum at both ends (near a
    memory, or at small σ, the top is a tight cluster at 1/σ² where Lanczos is slow)."""
    patterns = _random_patterns(40, 20, seed=6) * torch.linspace(0.1, 2, 20, dtype=F64)
    x = 0.3 * _random_patterns(2, 20, seed=7)
    den, sigma = EmpiricalDenoiser(patterns), 1.5
    dense = torch.linalg.eigvalsh(E.empirical_hessian(x, patterns, sigma))
    want = dense[:, -5:] if which == "LA" else dense[:, :5]
    for symmetrize in (True, False):
        got = hessian_eigsh(den, x, sigma, n_eigen=5, which=which,
                            symmetrize=symmetrize).eigenvalues
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


def test_lanczos_equals_dense_through_a_network():
    """A small torch network as the denoiser: its Jacobian is not symmetric, and both methods
    use the symmetric part; the dense Jacobian matches finite differences."""
    gen = torch.Generator().manual_seed(8)
    net = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.Tanh(), torch.nn.Linear(16, 12))
    with torch.no_grad():
        for param in net.parameters():
            param.copy_(0.5 * torch.randn(param.shape, generator=gen))
    net = net.double().requires_grad_(False)

    def den(x, sigma):
        return x.reshape(len(x), -1) - 0.5 * net(x.reshape(len(x), -1))

    x, sigma = torch.randn(2, 3, 4, generator=gen, dtype=F64), 0.8
    jac = denoiser_jacobian(den, x, sigma)
    h = 1e-6
    fd = torch.stack([(den(x.view(2, -1) + h * e, sigma) - den(x.view(2, -1) - h * e, sigma))
                      / (2 * h) for e in torch.eye(12, dtype=F64)], dim=-1)
    torch.testing.assert_close(jac, fd, rtol=1e-7, atol=1e-8)
    spec = hessian_spectrum(den, x, sigma)
    assert spec.asymmetry.min() > 1e-3
    for which, part in (("LA", slice(-3, None)), ("SA", slice(0, 3))):
        got = hessian_eigsh(den, x, sigma, n_eigen=3, which=which).eigenvalues
        torch.testing.assert_close(got, spec.eigenvalues[:, part], rtol=1e-8, atol=1e-10)


def test_curvature_validation():
    den = EmpiricalDenoiser(_random_patterns(3, 4, seed=9))
    x = torch.zeros(1, 4, dtype=F64)
    with pytest.raises(ValueError, match="n_eigen must"):
        hessian_eigsh(den, x, 0.5, n_eigen=4)
    with pytest.raises(ValueError, match="which"):
        hessian_eigsh(den, x, 0.5, n_eigen=2, which="LM")
    with pytest.raises(ValueError, match="sigma"):
        hessian_spectrum(den, x, -1.0)


def test_lanczos_unconverged_eigenvalues_are_nan():
    patterns = _random_patterns(40, 20, seed=6) * torch.linspace(0.1, 2, 20, dtype=F64)
    spec = hessian_eigsh(EmpiricalDenoiser(patterns), torch.zeros(1, 20, dtype=F64), 1.5,
                         n_eigen=5, which="SA", maxiter=1, ncv=6)
    assert spec.eigenvalues.shape == (1, 5) and torch.isnan(spec.eigenvalues).any()
