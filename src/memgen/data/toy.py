"""2D toy data sets: float32 (N, 2) point clouds, each a pure function of (n, seed).

Every set draws from its own ``numpy.random.default_rng(seed)``; nothing is global.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from memgen.errors import UserError


def _check_n(n: int) -> None:
    if n < 1:
        raise UserError(f"n must be >= 1, got {n}")


def circle_pool(n: int = 60000, seed: int = 9) -> np.ndarray:
    """Points (cos θ, sin θ) on the unit circle, θ ~ Uniform[0, 2π); (n, 2) float32."""
    _check_n(n)
    theta = np.random.default_rng(seed).uniform(0.0, 2.0 * np.pi, size=n)
    return np.stack([np.cos(theta), np.sin(theta)], axis=1).astype(np.float32)


def two_moons(n: int, seed: int, noise: float = 0.0) -> np.ndarray:
    """Two interleaved half circles (scikit-learn's ``make_moons`` geometry); (n, 2) float32.

    Each point picks a moon with probability 1/2 and t ~ Uniform[0, π]:
    upper moon (cos t, sin t), lower moon (1 - cos t, 1/2 - sin t);
    then isotropic Gaussian noise of standard deviation ``noise`` is added.
    """
    _check_n(n)
    if noise < 0:
        raise UserError(f"noise must be >= 0, got {noise}")
    rng = np.random.default_rng(seed)
    t = rng.uniform(0.0, np.pi, size=n)
    lower = rng.integers(0, 2, size=n).astype(bool)
    x = np.where(lower, 1.0 - np.cos(t), np.cos(t))
    y = np.where(lower, 0.5 - np.sin(t), np.sin(t))
    points = np.stack([x, y], axis=1) + noise * rng.standard_normal((n, 2))
    return points.astype(np.float32)


def gaussian_mixture(
    n: int, seed: int, centers: int = 8, radius: float = 1.0, std: float = 0.05
) -> np.ndarray:
    """Equal-weight mixture of isotropic Gaussians; (n, 2) float32.

    Centre k sits at radius · (cos 2πk/centers, sin 2πk/centers); each component has
    standard deviation ``std`` per coordinate.
    """
    _check_n(n)
    if centers < 1:
        raise UserError(f"centers must be >= 1, got {centers}")
    if std < 0:
        raise UserError(f"std must be >= 0, got {std}")
    rng = np.random.default_rng(seed)
    angles = 2.0 * np.pi * np.arange(centers) / centers
    means = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)  # (centers, 2)
    component = rng.integers(0, centers, size=n)
    points = means[component] + std * rng.standard_normal((n, 2))
    return points.astype(np.float32)


def spiral(n: int, seed: int, noise: float = 0.0) -> np.ndarray:
    """One-arm Archimedean spiral inside the unit disc; (n, 2) float32.

    t ~ Uniform[0, 1], point = t · (cos 3πt, sin 3πt) (1.5 turns), plus Gaussian noise
    of standard deviation ``noise``.
    """
    _check_n(n)
    if noise < 0:
        raise UserError(f"noise must be >= 0, got {noise}")
    rng = np.random.default_rng(seed)
    t = rng.uniform(0.0, 1.0, size=n)
    points = t[:, None] * np.stack([np.cos(3 * np.pi * t), np.sin(3 * np.pi * t)], axis=1)
    points = points + noise * rng.standard_normal((n, 2))
    return points.astype(np.float32)


TOY_SETS: dict[str, Callable[[int, int], np.ndarray]] = {
    "circle": circle_pool,
    "two-moons": two_moons,
    "gaussian-mixture": gaussian_mixture,
    "spiral": spiral,
}


def load_toy(name: str, n: int, seed: int) -> np.ndarray:
    """Toy set ``name`` from :data:`TOY_SETS` with ``n`` points drawn from ``seed``; (n, 2)."""
    if name not in TOY_SETS:
        raise UserError(f"unknown toy set {name!r}; known: {', '.join(sorted(TOY_SETS))}")
    return TOY_SETS[name](n, seed)
