"""PF-ODE log-likelihoods against closed forms, exact traces against dense Jacobians,
the empirical energy, and the clustering of samples into attractors."""

import math

import numpy as np
import pytest
import torch

from memgen.diffusion.denoisers import EmpiricalDenoiser, ScoreDenoiser
from memgen.diffusion.nets import get_preset
from memgen.diffusion.schedules import VESchedule
from memgen.memory import energy as E
from memgen.probes.likelihood import (EmpiricalPrior, GaussianPrior, jacobian_trace,
                                      learned_attractors, learned_energy_grid,
                                      pf_ode_log_likelihood, square_grid)

F64 = torch.float64
FOUR = torch.tensor([[1.0, 0.0], [-0.5, 0.8], [-0.4, -0.9], [0.2, 0.1]], dtype=F64)


class GaussianDenoiser:
    """Exact denoiser of N(μ, diag(s²)): D(x, σ) = μ + s²/(s² + σ²) (x − μ)."""

    def __init__(self, mean, var):
        self.mean, self.var = mean, var

    def __call__(self, x, sigma):
        sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1)
        return self.mean + self.var / (self.var + sigma**2) * (x - self.mean)


@pytest.mark.parametrize("var", [[0.5, 0.5], [0.05, 2.0]], ids=["isotropic", "diagonal"])
def test_log_likelihood_of_gaussian_data_is_the_analytic_density(var):
    mean, var = torch.tensor([0.3, -0.5], dtype=F64), torch.tensor(var, dtype=F64)
    x = torch.tensor([[0.0, 0.0], [1.5, -2.0], [-2.5, 1.0], [0.3, 3.0]], dtype=F64)
    smin, smax = 0.05, 10.0
    result = pf_ode_log_likelihood(GaussianDenoiser(mean, var), x, smin, smax,
                                   GaussianPrior(mean, var + smax**2), rtol=1e-8, atol=1e-8,
                                   method="DOP853")
    assert result.success and result.nfev > 0
    exact = GaussianPrior(mean, var + smin**2)(x)
    torch.testing.assert_close(result.log_p, exact, rtol=0, atol=1e-6)
    torch.testing.assert_close(result.energy, -exact, rtol=0, atol=1e-6)
    # the PF-ODE of Gaussian data is linear: x(σ) − μ = √((s² + σ²)/(s² + σ_min²)) (x − μ)
    stretch = ((var + smax**2) / (var + smin**2)).sqrt()
    torch.testing.assert_close(result.endpoint, mean + stretch * (x - mean), rtol=1e-6, atol=0)
    torch.testing.assert_close(result.log_p, result.log_prior + result.delta)


def test_looser_tolerance_gives_a_larger_but_bounded_error():
    mean, var = torch.zeros(2, dtype=F64), torch.tensor([0.1, 1.0], dtype=F64)
    x = torch.tensor([[0.5, -1.0], [2.0, 2.0]], dtype=F64)
    exact = GaussianPrior(mean, var + 0.1**2)(x)
    errors = [(pf_ode_log_likelihood(GaussianDenoiser(mean, var), x, 0.1, 5.0,
                                     GaussianPrior(mean, var + 25.0), rtol=tol,
                                     atol=tol).log_p - exact).abs().max() for tol in (1e-3, 1e-7)]
    assert errors[1] < errors[0] < 1e-1
    assert errors[1] < 1e-5


def test_error_control_holds_per_query_in_a_large_batch():
    """One hard query (near the separatrix of two patterns) among 2,000 easy ones: a
    state-wide RMS error test would let its error grow ~ 1,000-fold."""
    two = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=F64)
    hard = torch.tensor([[0.02, 0.3]], dtype=F64)
    x = torch.cat([hard, two[:1].repeat(2000, 1)])
    result = pf_ode_log_likelihood(EmpiricalDenoiser(two), x, 0.1, 2.0,
                                   EmpiricalPrior(two, 2.0), rtol=1e-4, atol=1e-4)
    exact = -E.empirical_energy(x[:2], two, 0.1)
    torch.testing.assert_close(result.log_p[:2], exact, rtol=0, atol=0.05)


def _dense_trace(denoiser, x, sigma):
    traces = []
    for b in range(len(x)):
        s = sigma[b:b + 1] if isinstance(sigma, torch.Tensor) else sigma
        jac = torch.autograd.functional.jacobian(lambda z: denoiser(z, s).reshape(-1),
                                                 x[b:b + 1])
        traces.append(jac.reshape(x[0].numel(), x[0].numel()).trace())
    return torch.stack(traces)


def _fd_trace(denoiser, x, sigma, h=1e-6):
    flat = x.reshape(len(x), -1)
    total = torch.zeros(len(x), dtype=x.dtype)
    for i in range(flat.shape[1]):
        e = torch.zeros_like(flat)
        e[:, i] = h
        up = denoiser((flat + e).reshape(x.shape), sigma).reshape(len(x), -1)[:, i]
        down = denoiser((flat - e).reshape(x.shape), sigma).reshape(len(x), -1)[:, i]
        total += (up - down) / (2 * h)
    return total


def test_jacobian_trace_of_empirical_denoiser_matches_dense_jacobian_and_fd():
    g = torch.Generator().manual_seed(0)
    patterns = torch.randn(6, 1, 2, 2, generator=g, dtype=F64)  # image-shaped, d = 4
    x = torch.randn(5, 1, 2, 2, generator=g, dtype=F64)
    sigma = torch.tensor([0.3, 0.5, 0.8, 1.2, 2.0], dtype=F64)
    denoiser = EmpiricalDenoiser(patterns)
    trace = jacobian_trace(denoiser, x, sigma)
    torch.testing.assert_close(trace, _dense_trace(denoiser, x, sigma))
    torch.testing.assert_close(trace, _fd_trace(denoiser, x, sigma), rtol=1e-6, atol=1e-8)
    # closed form: J_D = Cov_w(y)/σ², so tr J_D = tr Cov_w / σ²
    w = E.kernel_weights(x.reshape(5, -1), patterns.reshape(6, -1), 1 / (2 * sigma**2))
    cov = E.weighted_covariance(w, patterns.reshape(6, -1))
    torch.testing.assert_close(trace, cov.diagonal(dim1=1, dim2=2).sum(1) / sigma**2)


def test_jacobian_trace_of_a_score_network_matches_dense_jacobian():
    net = get_preset("toy-mlp").build().double().requires_grad_(False)
    denoiser = ScoreDenoiser(net, VESchedule())
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    with torch.no_grad():  # the trace builds its own graph
        trace = jacobian_trace(denoiser, x, 0.4)
    torch.testing.assert_close(trace, _dense_trace(denoiser, x, 0.4))


def test_grid_energy_of_empirical_denoiser_is_the_empirical_energy():
    denoiser, smin, res = EmpiricalDenoiser(FOUR), 0.3, 7
    grid = learned_energy_grid(denoiser, 1.5, res, smin, 3.0, EmpiricalPrior(FOUR, 3.0),
                               dtype=F64, rtol=1e-6, atol=1e-6)
    exact = E.empirical_energy(square_grid(1.5, res), FOUR, smin).reshape(res, res)
    assert grid.likelihood.success and grid.energy.shape == (res, res)
    torch.testing.assert_close(grid.energy, exact, rtol=0, atol=1e-4)
    assert exact.max() - exact.min() > 2  # a landscape, not a flat field
    # rows along y, columns along x
    torch.testing.assert_close(grid.axis, torch.linspace(-1.5, 1.5, res, dtype=F64))
    i, j = 1, res - 2
    point = torch.tensor([[grid.axis[j], grid.axis[i]]], dtype=F64)
    torch.testing.assert_close(grid.energy[i, j], E.empirical_energy(point, FOUR, smin)[0],
                               rtol=0, atol=1e-4)


def test_moment_matched_prior_gives_energy_up_to_a_constant():
    denoiser, smin, res = EmpiricalDenoiser(FOUR), 0.3, 6
    prior = GaussianPrior.moment_matched(FOUR, 20.0)
    grid = learned_energy_grid(denoiser, 1.5, res, smin, 20.0, prior, dtype=F64,
                               rtol=1e-5, atol=1e-5, batch=20)
    diff = grid.energy - E.empirical_energy(square_grid(1.5, res), FOUR, smin).reshape(res, res)
    assert float(diff.max() - diff.min()) < 5e-3  # relative energies right
    assert grid.likelihood.nfev > 0 and len(grid.likelihood.log_p) == res * res


def test_moment_matched_prior_and_priors_are_densities():
    data = torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, -1.0]], dtype=F64)
    prior = GaussianPrior.moment_matched(data, 0.5)
    torch.testing.assert_close(prior.mean, torch.tensor([2.0, 1.0], dtype=F64))
    torch.testing.assert_close(prior.var, data.var(0, unbiased=False) + 0.25)
    x = torch.tensor([[0.3, -0.2]], dtype=F64)
    expected = sum(-0.5 * ((x[0, j] - prior.mean[j]) ** 2 / prior.var[j])
                   - 0.5 * math.log(2 * math.pi * prior.var[j]) for j in range(2))
    torch.testing.assert_close(prior(x)[0], expected)
    # one pattern: the empirical prior is a Gaussian
    one = EmpiricalPrior(data[:1], 0.7)
    torch.testing.assert_close(one(x), GaussianPrior(data[0], torch.full((2,), 0.49,
                                                                          dtype=F64))(x))


def test_bad_input_raises():
    denoiser, x = EmpiricalDenoiser(FOUR), FOUR.clone()
    prior = EmpiricalPrior(FOUR, 2.0)
    with pytest.raises(ValueError, match="sigma_min"):
        pf_ode_log_likelihood(denoiser, x, 2.0, 1.0, prior)
    with pytest.raises(ValueError, match="non-empty"):
        pf_ode_log_likelihood(denoiser, x[:0], 0.5, 2.0, prior)
    with pytest.raises(ValueError, match="prior must return"):
        pf_ode_log_likelihood(denoiser, x, 1.0, 2.0, lambda z: z.sum())
    with pytest.raises(ValueError, match="var must be positive"):
        GaussianPrior(torch.zeros(2), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError):
        square_grid(1.0, 1)
    with pytest.raises(ValueError, match="bandwidth"):
        learned_attractors(FOUR, 0.1, bandwidth=-1.0)


def _blobs(centres, counts, std, seed=0):
    g = torch.Generator().manual_seed(seed)
    points = [c + std * torch.randn(n, 2, generator=g, dtype=F64)
              for c, n in zip(centres, counts)]
    labels = np.repeat(np.arange(len(counts)), counts)
    return torch.cat(points), labels


def test_planted_clusters_are_recovered_with_their_counts():
    centres = torch.tensor([[1.0, 0.0], [-0.5, 0.8], [0.0, -0.6]], dtype=F64)
    samples, labels = _blobs(centres, [40, 150, 70], std=0.03)
    patterns = torch.cat([centres[:2], torch.tensor([[-0.6, -0.9]], dtype=F64)])
    found = learned_attractors(samples, 0.03, patterns)
    np.testing.assert_array_equal(found.counts, [150, 70, 40])
    for k, planted in enumerate([1, 2, 0]):  # largest first
        assert (found.assignment[labels == planted] == k).all()
        assert float((found.centres[k] - centres[planted]).norm()) < 0.02
    np.testing.assert_array_equal(found.memorized, [True, False, True])
    np.testing.assert_array_equal(found.nearest_pattern[[0, 2]], [1, 0])
    assert found.bandwidth == 0.03


def test_attractors_a_few_sigma_apart_are_resolved():
    centres = torch.tensor([[0.0, 0.0], [0.15, 0.0]], dtype=F64)  # 5σ apart
    samples, labels = _blobs(centres, [100, 100], std=0.03, seed=3)
    found = learned_attractors(samples, 0.03, centres)
    assert len(found.counts) == 2 and found.memorized.all()
    assert (np.abs(found.counts - 100) <= 5).all()
    agree = max((found.assignment == labels).mean(), (found.assignment != labels).mean())
    assert agree > 0.95


def test_unresolved_or_dense_patterns_are_not_memorized():
    # two training points closer than the samples' noise: one mode, half the weight each
    pair = torch.tensor([[0.0, 0.0], [0.04, 0.0]], dtype=F64)
    samples, _ = _blobs(pair, [60, 60], std=0.03, seed=1)
    found = learned_attractors(samples, 0.03, pair)
    assert len(found.counts) == 1 and not found.memorized[0]
    assert 0.4 < found.max_weight[0] < 0.6
    # a generalizing model: samples all along a ring of densely stored points
    theta = torch.linspace(0, 2 * math.pi, 1001, dtype=F64)[:-1]
    ring = torch.stack([theta.cos(), theta.sin()], 1)
    g = torch.Generator().manual_seed(2)
    samples = ring[torch.randint(1000, (300,), generator=g)] + 0.03 * torch.randn(
        300, 2, generator=g, dtype=F64)
    found = learned_attractors(samples, 0.03, ring)
    assert found.counts.sum() == 300 and not found.memorized.any()
    assert (found.max_weight < 0.5).all()
    no_patterns = learned_attractors(samples, 0.03)
    assert no_patterns.memorized is None
    np.testing.assert_array_equal(no_patterns.counts, found.counts)


def test_plot_learned_landscape_draws_two_panels_per_K():
    from memgen.report.landscapes import plot_learned_landscape

    g = np.linspace(0, 1, 25)
    energy = np.add.outer(g, g)
    rows = [{"K": 2, "exact": energy, "learned": energy + 3, "train": np.eye(2),
             "centres": np.eye(2), "counts": np.array([5, 3]),
             "memorized": np.array([True, False]),
             "exact_attractors": np.eye(2), "exact_kinds": np.array(["memorized", "spurious"])},
            {"K": 9, "exact": energy, "learned": energy, "train": np.zeros((9, 2)),
             "centres": np.zeros((0, 2)), "counts": np.zeros(0, int),
             "memorized": np.zeros(0, bool)}]
    fig = plot_learned_landscape(rows, extent=1.6, sigma=0.387)
    assert len(fig.axes) == 4
    assert fig.axes[1].get_title() == "K = 2: trained (PF-ODE)"
