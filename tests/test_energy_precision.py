"""float32 energies, posterior weights, denoiser and gradients against float64 brute force.

The expanded form ‖x‖² − 2xᵀy + ‖y‖² in float32 puts errors of β·u·(‖x‖² + ‖y‖²) into
every logit: on 784-D data in [−1, 1] at σ = 0.05 (β = 200) the weights were off by up
to 8e-3. Now they must be float64 weights rounded once (≤ 1e-6).
"""

import math

import pytest
import torch

from memgen.diffusion.denoisers import EmpiricalDenoiser
from memgen.memory import energy as E
from memgen.memory.attractors import Memory
from memgen.neighbours import pairwise_sq_dist

D, N = 784, 200
SIGMAS = [0.02, 0.05, 0.1]


def _patterns(kind: str) -> torch.Tensor:
    """(N, D) float32 patterns: uniform in [−1, 1], or Fashion-MNIST-like — rank 10 around
    a grey background of −0.5, clipped to [−1, 1]."""
    g = torch.Generator().manual_seed(0)
    if kind == "uniform":
        return (2 * torch.rand(N, D, generator=g, dtype=torch.float64) - 1).float()
    basis = torch.randn(D, 10, generator=g, dtype=torch.float64) / math.sqrt(10)
    codes = 0.3 * torch.randn(N, 10, generator=g, dtype=torch.float64)
    return (-0.5 + codes @ basis.T).clamp(-1, 1).float()


def _queries(y: torch.Tensor, sigma: float) -> torch.Tensor:
    """(100, D) float32: midpoints of random pairs (the posterior splits between two
    patterns there) and noisy patterns y_i + σ n (one pattern dominates)."""
    g = torch.Generator().manual_seed(1)
    n = len(y)
    i = torch.randint(n, (100,), generator=g)
    j = (i + 1 + torch.randint(n - 1, (100,), generator=g)) % n
    mid = 0.5 * (y[i[:50]] + y[j[:50]]) + 0.01 * sigma * torch.randn(50, D, generator=g)
    noisy = y[i[50:]] + sigma * torch.randn(50, D, generator=g)
    return torch.cat([mid, noisy])


def _sq_dist64(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, N) float64 ‖x − y‖² by direct differences, one query at a time."""
    y64 = y.double()
    return torch.stack([(y64 - xi).square().sum(1) for xi in x.double()])


@pytest.mark.parametrize("kind", ["uniform", "fmnist_like"])
@pytest.mark.parametrize("sigma", SIGMAS)
def test_float32_kernel_weights_denoiser_and_energy_match_float64(kind, sigma, one_thread):
    y = _patterns(kind)
    x = _queries(y, sigma)
    gamma = E.kernel_gamma(sigma)
    logits = -gamma * _sq_dist64(x, y)
    w64 = torch.softmax(logits, dim=1)
    assert (w64.max(1).values[:50] < 0.99).any()  # some rows really are split
    w = E.kernel_weights(x, y, gamma)
    assert w.dtype == torch.float32
    assert (w.double() - w64).abs().max() <= 1e-6
    denoised64 = w64 @ y.double()
    assert (E.empirical_denoise(x, y, sigma).double() - denoised64).abs().max() <= 1e-6
    assert (EmpiricalDenoiser(y)(x, sigma).double() - denoised64).abs().max() <= 1e-6
    # ∇E_σ = (x − D)/σ²: compare σ²∇E_σ = x − D, the part float32 has to get right
    step = sigma**2 * E.empirical_grad(x, y, sigma).double()
    assert (step - (x.double() - denoised64)).abs().max() <= 1e-6
    energy64 = -torch.logsumexp(logits, dim=1) / gamma
    relative = (E.kernel_energy(x, y, gamma).double() - energy64).abs() / energy64.abs()
    assert relative.max() <= 1e-6


@pytest.mark.parametrize("kind", ["kernel", "dense_am"])
def test_float32_retrieval_step_matches_float64(kind, one_thread):
    """The fixed-point step of an attractor search, float32 against float64 brute force."""
    y = _patterns("fmnist_like")
    if kind == "dense_am":  # equal norms, so that midpoints split the DenseAM posterior too
        y = (y / y.double().norm(dim=1, keepdim=True).float()) * 20
    x = _queries(y, 0.05)
    # the kernel's γ = 1/(2σ²), or DenseAM's β
    inverse_temperature = E.kernel_gamma(0.05) if kind == "kernel" else 2.0
    if kind == "kernel":
        logits = -inverse_temperature * _sq_dist64(x, y)
    else:
        logits = inverse_temperature * (x.double() @ y.double().T)
    w64 = torch.softmax(logits, dim=1)
    assert (w64.max(1).values[:50] < 0.99).any()
    memory = Memory(y, inverse_temperature, kind)
    step = memory.retrieval_step(x)
    assert (step.double() - w64 @ y.double()).abs().max() <= 1e-6 * y.abs().max()
    assert (memory.weights(x).double() - w64).abs().max() <= 1e-6


@pytest.mark.parametrize("offset", [0.0, 2.0**10, 2.0**16])
def test_pairwise_sq_dist_is_exact_within_the_window(offset, one_thread):
    """Entries within W of a row's minimum equal float64 brute force; all others exceed the
    minimum by more than W — for data far from the origin too."""
    g = torch.Generator().manual_seed(2)
    y = (offset + torch.randn(300, 64, generator=g, dtype=torch.float64)).float()
    x = torch.cat([y[:20] + 0.01 * torch.randn(20, 64, generator=g),
                   offset + torch.randn(20, 64, generator=g)]).float()
    exact = _sq_dist64(x, y)
    low = exact.min(1, keepdim=True).values
    for within in (0.0, 1.0, 30.0, float("inf")):
        d2 = pairwise_sq_dist(x, y, within=within)
        assert d2.dtype == torch.float64
        inside = exact <= low + within
        # direct float64 differences, or a float64 GEMM of the centred data for busy rows
        torch.testing.assert_close(d2[inside], exact[inside], rtol=1e-12, atol=1e-11)
        assert (d2[~inside] > low.expand_as(d2)[~inside] + within).all()
    torch.testing.assert_close(pairwise_sq_dist(x, y), exact, rtol=1e-9, atol=1e-9 * offset**2)


def test_per_row_gamma_and_gradients_flow(one_thread):
    """(B,) kernel γ = 1/(2σ²), as the denoiser passes them, and autograd through the screen."""
    y = _patterns("uniform")[:50]
    x = _queries(y, 0.05)[:8].clone().requires_grad_(True)
    gamma = torch.linspace(10.0, 400.0, 8)
    w = E.kernel_weights(x, y, gamma=gamma)
    for b in range(8):
        torch.testing.assert_close(w[b], E.kernel_weights(x[b:b + 1], y, float(gamma[b]))[0])
    E.kernel_energy(x, y, 200.0).sum().backward()
    torch.testing.assert_close(x.grad, E.kernel_grad(x.detach(), y, 200.0), rtol=1e-4, atol=1e-5)
