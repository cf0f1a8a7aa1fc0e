"""Energies, scores and Hessians against finite differences, autograd and closed forms."""

import math

import pytest
import torch

from memgen.data import circle_pool
from memgen.diffusion.denoisers import EmpiricalDenoiser
from memgen.memory import energy as E

F64 = torch.float64


def _data(seed=0, n=7, d=4, b=5):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, d, generator=g, dtype=F64),
            torch.randn(n, d, generator=g, dtype=F64))


ENERGIES = [
    ("dense_am", lambda x, y: E.dense_am_energy(x, y, inverse_temperature=1.7),
     lambda x, y: E.dense_am_grad(x, y, inverse_temperature=1.7),
     lambda x, y: E.dense_am_hessian(x, y, inverse_temperature=1.7)),
    ("kernel", lambda x, y: E.kernel_energy(x, y, gamma=0.8),
     lambda x, y: E.kernel_grad(x, y, gamma=0.8), lambda x, y: E.kernel_hessian(x, y, gamma=0.8)),
    ("empirical_ve", lambda x, y: E.empirical_energy(x, y, 0.9),
     lambda x, y: E.empirical_grad(x, y, 0.9), lambda x, y: E.empirical_hessian(x, y, 0.9)),
    ("empirical_vp", lambda x, y: E.empirical_energy(x, y, 0.6, scale=0.8),
     lambda x, y: E.empirical_grad(x, y, 0.6, scale=0.8),
     lambda x, y: E.empirical_hessian(x, y, 0.6, scale=0.8)),
]


@pytest.mark.parametrize("name, energy, grad, hessian", ENERGIES)
def test_gradient_matches_finite_differences(name, energy, grad, hessian):
    x, y = _data()
    h = 1e-6
    eye = torch.eye(x.shape[1], dtype=F64)
    fd = torch.stack([(energy(x + h * e, y) - energy(x - h * e, y)) / (2 * h) for e in eye], 1)
    torch.testing.assert_close(grad(x, y), fd, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name, energy, grad, hessian", ENERGIES)
def test_hessian_matches_autograd(name, energy, grad, hessian):
    x, y = _data(1)
    auto = torch.stack([torch.autograd.functional.hessian(lambda v: energy(v[None], y)[0], xi)
                        for xi in x])
    torch.testing.assert_close(hessian(x, y), auto, rtol=1e-8, atol=1e-9)


def test_empirical_energy_is_minus_log_density():
    x, y = _data(2, n=3, d=2, b=4)
    sigma, a = 0.7, 0.9
    dens = torch.stack([torch.exp(-((xi - a * y) ** 2).sum(1) / (2 * sigma**2)).mean()
                        for xi in x]) / (2 * math.pi * sigma**2)
    torch.testing.assert_close(E.empirical_energy(x, y, sigma, a), -torch.log(dens))


def test_three_inverse_temperatures():
    """γ = 1/(2σ²) makes the kernel energy −log p_σ up to γ·E + const (eq. 13); β_σ = a/σ²
    makes DenseAM −log p_σ up to β_σ·E + const for VE and patterns of one norm (§C.2)."""
    x, y = _data(5, n=6, d=3, b=7)
    sigma = 0.8
    assert E.kernel_gamma(sigma) == 1 / (2 * sigma**2)
    assert E.beta_sigma(0.9, sigma) == pytest.approx(0.9 / sigma**2)
    exact = E.empirical_energy(x, y, sigma)
    gamma = E.kernel_gamma(sigma)
    via_kernel = gamma * E.kernel_energy(x, y, gamma=gamma)
    torch.testing.assert_close(exact - via_kernel, (exact - via_kernel)[:1].expand(7))
    unit = y / y.norm(dim=1, keepdim=True)
    exact = E.empirical_energy(x, unit, sigma)
    beta = E.beta_sigma(1.0, sigma)
    via_dense_am = beta * E.dense_am_energy(x, unit, inverse_temperature=beta)
    torch.testing.assert_close(exact - via_dense_am, (exact - via_dense_am)[:1].expand(7))


def test_stable_at_large_inverse_temperature():
    x, y = _data(3)
    assert torch.isfinite(E.kernel_energy(x, y, 1e6)).all()
    assert torch.isfinite(E.dense_am_energy(x, y, 1e6)).all()
    assert torch.isfinite(E.kernel_grad(x, y, 1e6)).all()
    # Far from every pattern the energy is the distance to the nearest: min ‖x − y‖².
    nearest = torch.cdist(x, y).min(1).values ** 2
    torch.testing.assert_close(E.kernel_energy(x, y, 1e6), nearest, rtol=1e-5, atol=1e-5)


def test_float32_inputs_give_float32():
    x, y = _data()
    assert E.kernel_energy(x.float(), y.float(), 2.0).dtype == torch.float32


def test_circle_energy_is_the_continuum_limit_of_the_kernel_energy():
    gamma = 20.0
    pool = torch.from_numpy(circle_pool(100_000, seed=9)).double()
    R = torch.tensor([0.0, 0.3, 0.6, 0.9, 0.97, 1.0, 1.2, 1.6], dtype=F64)
    x = torch.stack([R, torch.zeros_like(R)], 1)
    # E_kernel = R² + 1 − (1/γ) log Σ exp(2γR cos) = circle_energy − (1/γ) log N (+ MC error)
    discrete = E.kernel_energy(x, pool, gamma=gamma) + math.log(len(pool)) / gamma
    assert (discrete - E.circle_energy(R, gamma=gamma)).abs().max() <= 1e-3


def test_circle_score_is_minus_the_radial_derivative():
    R = torch.linspace(0.05, 2.0, 40, dtype=F64)
    gamma, h = 20.0, 1e-6
    fd = (E.circle_energy(R + h, gamma) - E.circle_energy(R - h, gamma)) / (2 * h)
    torch.testing.assert_close(E.circle_radial_score(R, gamma=gamma), -fd, rtol=1e-6, atol=1e-7)
    # Large γR: no overflow, and the score pulls onto the circle from both sides.
    big = E.circle_radial_score(torch.tensor([0.5, 1.5], dtype=F64), 1e4)
    assert torch.isfinite(big).all() and big[0] > 0 > big[1]


def test_exact_denoiser_equals_brute_force_posterior_mean():
    x, y = _data(4, n=6, d=3, b=8)
    sigma = torch.linspace(0.2, 3.0, 8, dtype=F64)
    post = []
    for xi, s in zip(x, sigma):
        like = torch.tensor(dtype=F64, data=[
            math.exp(-float(((xi - yi) ** 2).sum()) / (2 * float(s) ** 2)) for yi in y])
        post.append((like / like.sum()) @ y)
    torch.testing.assert_close(EmpiricalDenoiser(y)(x, sigma), torch.stack(post))
    torch.testing.assert_close(EmpiricalDenoiser(y, memory_budget=64)(x, sigma), torch.stack(post))
    # VP scale a: D = a Σ w_i y_i with weights of ‖x − a y_i‖²
    torch.testing.assert_close(E.empirical_denoise(x, y, 0.5, 0.7),
                               EmpiricalDenoiser(0.7 * y)(x, 0.5))
