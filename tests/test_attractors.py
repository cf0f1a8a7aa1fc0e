"""Attractors: the two-pattern bifurcation, the large and small inverse-temperature limits,
monotone retrieval."""

import numpy as np
import pytest
import torch

from memgen.memory import energy as E
from memgen.memory.attractors import (Memory, MinimumEnergyPath, find_attractors, merge_endpoints,
                                      min_hessian_eigenvalue, retrieve)
from memgen.probes.starts import box_starts, noisy_starts

F64 = torch.float64


def _two_patterns(mu):
    return torch.tensor([[mu], [-mu]], dtype=F64)


def _count_minima_1d(mu, sigma):
    """Local minima of −log p_σ for patterns ±μ, on a fine grid."""
    x = torch.linspace(-3, 3, 60_001, dtype=F64)[:, None]
    e = E.empirical_energy(x, _two_patterns(mu), sigma)
    return int(((e[1:-1] < e[:-2]) & (e[1:-1] < e[2:])).sum())


def test_two_patterns_two_minima_above_sigma_one_below():
    sigma = 0.5
    assert _count_minima_1d(0.6, sigma) == 2
    assert _count_minima_1d(0.4, sigma) == 1
    memory = Memory.from_sigma(_two_patterns(0.6), sigma)
    starts = torch.linspace(-2, 2, 41, dtype=F64)[:, None]
    found = find_attractors(memory, starts)
    # The start at exactly 0 stays on the symmetric critical point: a saddle, and seen as one.
    assert found.count("saddle") == 1 and abs(float(found.points[found.kinds == "saddle"])) < 1e-12
    minima = found.points[found.kinds != "saddle"]
    assert len(minima) == 2 and minima.abs().min() > 0.3
    one = find_attractors(Memory.from_sigma(_two_patterns(0.4), sigma), starts)
    assert len(one.points) == 1 and abs(float(one.points[0, 0])) < 1e-4


def test_two_pattern_switch_located_to_1e_3():
    """Bisection on μ/σ: the minimum count switches from 1 to 2 at μ = σ."""
    sigma, lo, hi = 0.5, 0.3, 0.8
    while hi - lo > 1e-4:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if _count_minima_1d(mid, sigma) == 2 else (mid, hi)
    assert abs((lo + hi) / 2 - sigma) < 1e-3
    # The Hessian at the symmetric point changes sign at the same place.
    at_zero = torch.zeros(1, 1, dtype=F64)
    lam = [min_hessian_eigenvalue(Memory.from_sigma(_two_patterns(m), sigma), at_zero)[0]
           for m in (sigma - 1e-3, sigma + 1e-3)]
    assert lam[0] > 0 > lam[1]


@pytest.mark.parametrize("kind", ["kernel", "dense_am"])
def test_large_inverse_temperature_stores_every_pattern_and_nothing_else(kind):
    g = torch.Generator().manual_seed(0)
    y = torch.randn(12, 5, generator=g, dtype=F64)
    if kind == "dense_am":
        y = y / y.norm(dim=1, keepdim=True)  # equal norms: every pattern can be a fixed point
    memory = Memory(y, 200.0, kind)
    starts = torch.cat([noisy_starts(y, 400, 0.05, g), y])
    found = find_attractors(memory, starts)
    assert found.count("memorized") == 12
    assert found.count("spurious") == 0 and found.count("saddle") == 0
    assert sorted(found.nearest_pattern.tolist()) == list(range(12))
    assert (found.min_eigenvalue > 0).all()


def test_small_gamma_single_minimum_at_the_mean():
    g = torch.Generator().manual_seed(1)
    y = torch.randn(30, 3, generator=g, dtype=F64)
    memory = Memory(y, 1e-3, "kernel")
    found = find_attractors(memory, box_starts(y, 200, g))
    assert len(found.points) == 1 and found.kinds[0] == "spurious"
    assert (found.points[0] - y.mean(0)).norm() < 1e-2
    assert found.min_eigenvalue[0] > 1.9  # ≈ 2(1 − 2γ·Var) ≈ 2


@pytest.mark.parametrize("method", ["fixed_point", "gradient"])
def test_retrieval_descends_monotonically(method):
    g = torch.Generator().manual_seed(2)
    y = torch.randn(50, 2, generator=g, dtype=F64)
    memory = Memory(y, 3.0, "kernel")
    starts = box_starts(y, 64, g)
    trace = [memory.energy(starts)]
    run = retrieve(memory, starts, method=method, tol=1e-9, max_iter=3000,
                   callback=lambda i, x, e: trace.append(e.clone()))
    steps = torch.stack(trace)
    assert (steps[1:] <= steps[:-1] + 1e-12).all()
    assert run.converged.all()
    assert memory.grad(run.endpoints).norm(dim=1).max() < 1e-6


def test_hessian_eigenvalue_matches_dense_and_lanczos_paths(monkeypatch):
    import memgen.memory.attractors as A

    g = torch.Generator().manual_seed(3)
    y = torch.randn(40, 6, generator=g, dtype=F64)
    memory = Memory(y, 0.3, "kernel")
    x = torch.randn(5, 6, generator=g, dtype=F64)
    dense = torch.linalg.eigvalsh(E.kernel_hessian(x, y, 0.3))[:, 0].numpy()
    np.testing.assert_allclose(min_hessian_eigenvalue(memory, x), dense, rtol=1e-10, atol=1e-12)
    monkeypatch.setattr(A, "_EXACT_EIG_MAX", 2)  # force the Lanczos path
    np.testing.assert_allclose(min_hessian_eigenvalue(memory, x), dense, rtol=1e-8, atol=1e-10)


def test_merge_endpoints_greedy_by_energy():
    points = torch.tensor([[0.0], [0.05], [1.0], [1.04], [3.0]], dtype=F64)
    energies = torch.tensor([1.0, 0.5, 2.0, 2.5, 0.1], dtype=F64)
    reps, assignment = merge_endpoints(points, energies, tol=0.1)
    assert reps.tolist() == [4, 1, 2]
    assert assignment.tolist() == [1, 1, 2, 2, 0]


def test_minimum_energy_path_barrier_equals_exact_saddle_height():
    """Two patterns ±μ e₁ in 2D: the saddle is the origin, the minima at ±x* e₁."""
    sigma, mu = 0.5, 0.8
    y = torch.tensor([[mu, 0.0], [-mu, 0.0]], dtype=F64)
    memory = Memory.from_sigma(y, sigma)
    found = find_attractors(memory, torch.tensor([[1.0, 0.3], [-1.0, -0.2]], dtype=F64))
    a, b = found.points
    from memgen.memory.attractors import minimum_energy_path

    path = minimum_energy_path(memory, a, b, n_images=81)
    assert isinstance(path, MinimumEnergyPath) and path.points.shape == (81, 2)
    import memgen.memory.attractors as A

    assert not hasattr(A, "Path")  # the path class no longer shadows pathlib.Path
    exact = float(memory.energy(torch.zeros(1, 2, dtype=F64))[0] - memory.energy(a[None])[0])
    assert path.barrier == pytest.approx(exact, rel=1e-3)


def test_ring_barriers_on_three_well_separated_points():
    from memgen.memory.attractors import ring_barriers, ring_energy_spread

    theta = torch.tensor([0.0, 2.0, 4.0], dtype=F64) * np.pi / 3
    y = torch.stack([theta.cos(), theta.sin()], 1)
    memory = Memory(y, 20.0, "kernel")
    found = find_attractors(memory, y + 0.01)
    barriers = ring_barriers(memory, found, n_images=61)
    assert found.count("memorized") == 3 and len(barriers) == 3
    # Symmetric wells: the saddle is the chord's midpoint, at squared distance 3/4 from two
    # patterns (the third is e^{−45} away), so the barrier is 3/4 − log(2)/β above E ≈ 0.
    assert np.allclose(barriers, 0.75 - np.log(2) / 20, rtol=2e-3)
    assert ring_energy_spread(memory) > 0.5


def test_find_attractors_from_patterns_with_inverse_temperature_or_sigma():
    y = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=F64)
    starts = torch.tensor([[0.8, 0.1], [-0.7, 0.2]], dtype=F64)
    by_sigma = find_attractors(y, starts, sigma=0.3)
    by_gamma = find_attractors(y, starts, inverse_temperature=1 / (2 * 0.3**2))
    torch.testing.assert_close(by_sigma.points, by_gamma.points)
    assert by_sigma.count("memorized") == 2
    dense = find_attractors(y, starts, inverse_temperature=5.0, kind="dense_am")
    torch.testing.assert_close(dense.points,
                               find_attractors(Memory(y, 5.0, "dense_am"), starts).points)
    with pytest.raises(ValueError, match="exactly one"):
        find_attractors(y, starts, sigma=0.3, inverse_temperature=2.0)
    with pytest.raises(ValueError, match="exactly one"):
        find_attractors(y, starts)
    with pytest.raises(ValueError, match="use inverse_temperature for dense_am"):
        find_attractors(y, starts, sigma=0.3, kind="dense_am")


def test_memory_inverse_temperature_is_the_kernel_gamma_or_the_dense_am_beta():
    g = torch.Generator().manual_seed(4)
    y, x = torch.randn(6, 3, generator=g, dtype=F64), torch.randn(4, 3, generator=g, dtype=F64)
    sigma = 0.6
    kernel = Memory.from_sigma(y, sigma)
    assert kernel.inverse_temperature == E.kernel_gamma(sigma) == 1 / (2 * sigma**2)
    torch.testing.assert_close(kernel.energy(x), E.kernel_energy(x, y, gamma=1 / (2 * sigma**2)))
    assert kernel.curvature == (2.0, 2 * kernel.inverse_temperature)
    dense = Memory(y, 1.5, "dense_am")
    torch.testing.assert_close(dense.grad(x), E.dense_am_grad(x, y, inverse_temperature=1.5))
    assert dense.curvature == (1.0, 1.5)
    with pytest.raises(ValueError, match="inverse temperature must be positive"):
        Memory(y, 0.0)


def test_hessian_eigenvalue_at_a_lone_memory_is_c():
    """Where one pattern carries all the weight Cov_w = 0, so λ_min = c exactly."""
    y = torch.tensor([[0.0, 0.0], [3.0, 0.0]], dtype=F64)
    np.testing.assert_array_equal(min_hessian_eigenvalue(Memory(y, 200.0), y), [2.0, 2.0])
    np.testing.assert_array_equal(min_hessian_eigenvalue(Memory(y, 200.0, "dense_am"),
                                                         y[1:]), [1.0])


def test_annealed_starts_end_near_training_points_at_small_sigma():
    """Reverse diffusion with the exact denoiser, stopped at small σ: samples of p_σ."""
    from memgen.probes.starts import make_starts

    g = torch.Generator().manual_seed(5)
    theta = torch.arange(5, dtype=F64) * 2 * np.pi / 5
    y = torch.stack([theta.cos(), theta.sin()], 1)
    x = make_starts("annealed", y, 400, 0.02, g)
    nearest = torch.cdist(x, y).min(1).values
    assert nearest.max() < 0.02 * 5  # within 5σ of a training point
    assert 0.01 < nearest.mean() < 0.04  # ≈ σ·√(π/2) = 0.025 for a 2D Gaussian at σ
    counts = torch.bincount(torch.cdist(x, y).argmin(1), minlength=5)
    assert counts.min() > 40  # every pattern is reached, roughly uniformly (80 each)
