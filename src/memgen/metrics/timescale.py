"""The training-time axis: when memorization sets in, and how that time scales with K.

    τ_mem(K) = min{t : P_t(memorized) ≥ θ}     (first checkpoint at or past the threshold θ)
    τ_mem ≈ A · K^b,  fitted as  log τ = log A + b log K  by ordinary least squares

Bonnaire et al. 2025 report τ_mem ∝ K (b = 1): the larger the training set, the longer
training runs before the model starts reproducing it. The fit reports b with its standard
error and a t-distribution 95% interval (n − 2 degrees of freedom), so "b = 1" can be
checked rather than eyeballed.

Symbols → names: t → steps, P_t(memorized) → memorized, θ → threshold, b → exponent,
A → prefactor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats

from memgen.errors import UserError

MEMORIZED_HALF = 0.5  # τ_mem: the first step count with memorized ≥ this fraction
MIN_POINTS = 3  # a slope with an uncertainty needs n − 2 ≥ 1 degrees of freedom


def tau_mem(steps: Sequence[float], memorized: Sequence[float],
            threshold: float = 0.5) -> int | float | None:
    """τ_mem: the first step count whose memorized fraction is ≥ threshold; None if never.

    steps: (T,) strictly increasing training-step counts; memorized: (T,) fractions in
    [0, 1] at those steps (NaN: not measured, never counts as reached). No interpolation
    between checkpoints: the answer is one of the given step counts.
    """
    steps, memorized = np.asarray(steps), np.asarray(memorized, dtype=np.float64)
    if steps.ndim != 1 or steps.shape != memorized.shape or len(steps) == 0:
        raise UserError(f"steps and memorized must be two non-empty (T,) arrays, got "
                         f"shapes {steps.shape} and {memorized.shape}")
    if not 0 < threshold <= 1:
        raise UserError(f"threshold must lie in (0, 1], got {threshold}")
    if (np.diff(steps) <= 0).any():
        raise UserError("steps must be sorted strictly ascending")
    finite = memorized[np.isfinite(memorized)]
    if ((finite < 0) | (finite > 1)).any():
        raise UserError("memorized fractions must lie in [0, 1]")
    hit = np.flatnonzero(np.nan_to_num(memorized, nan=-1.0) >= threshold)
    return steps[hit[0]].item() if len(hit) else None


def tau_mem_per_K(steps: Sequence[float], memorized: np.ndarray,
                  threshold: float = 0.5) -> list[int | float | None]:
    """τ_mem for every row of memorized (len(Ks), len(steps)): one value (or None) per K."""
    memorized = np.asarray(memorized, dtype=np.float64)
    if memorized.ndim != 2:
        raise UserError(f"memorized must be (len(Ks), len(steps)), got {memorized.shape}")
    return [tau_mem(steps, row, threshold) for row in memorized]


@dataclass(frozen=True)
class PowerLaw:
    """τ ≈ prefactor · K^exponent, from OLS of log τ on log K.

    stderr: standard error of the exponent, sqrt(s² / Σ(log K − mean)²) with
    s² = RSS / (n − 2); ci95: exponent ± t_{0.975, n−2} · stderr; r2: 1 − RSS / TSS of the
    log–log fit (1 when log τ is constant and fitted exactly); n_points: the K used.
    """

    exponent: float
    prefactor: float
    stderr: float
    ci95: tuple[float, float]
    r2: float
    n_points: int

    def predict(self, K) -> np.ndarray:
        return self.prefactor * np.asarray(K, dtype=np.float64) ** self.exponent

    def as_dict(self) -> dict:
        return {"exponent": self.exponent, "prefactor": self.prefactor,
                "stderr": self.stderr, "ci95": list(self.ci95), "r2": self.r2,
                "n_points": self.n_points}


def fit_power_law(K: Sequence[float], tau: Sequence[float | None]) -> PowerLaw:
    """Fit τ_mem ≈ A · K^b by least squares on log τ = log A + b log K.

    K: (M,) positive set sizes; tau: (M,) τ_mem per K, None or NaN where not reached
    (those K are left out). Raises ValueError with fewer than MIN_POINTS = 3 reached
    points or fewer than two distinct K among them: with n − 2 = 0 degrees of freedom
    the exponent has no uncertainty to report, and a slope without one is not a result.
    """
    K = np.asarray(K, dtype=np.float64)
    tau = np.array([np.nan if t is None else t for t in tau], dtype=np.float64)
    if K.ndim != 1 or K.shape != tau.shape:
        raise UserError(f"K and tau must be two (M,) arrays, got {K.shape} and {tau.shape}")
    keep = np.isfinite(tau)
    K, tau = K[keep], tau[keep]
    if not ((K > 0).all() and (tau > 0).all() and np.isfinite(K).all()):
        raise UserError("K and the reached τ must be positive finite numbers (log–log fit)")
    if len(K) < MIN_POINTS:
        raise UserError(f"too few points with τ reached: {len(K)} (need ≥ {MIN_POINTS})")
    x, y = np.log(K), np.log(tau)
    dx, dy = x - x.mean(), y - y.mean()
    sxx = float(dx @ dx)
    if sxx == 0:
        raise UserError("the reached τ all belong to one K: no slope to fit")
    b = float(dx @ dy) / sxx
    a = y.mean() - b * x.mean()
    rss = float(np.sum((y - a - b * x) ** 2))
    tss = float(dy @ dy)
    n = len(x)
    se = float(np.sqrt(rss / (n - 2) / sxx))
    half = float(stats.t.ppf(0.975, n - 2)) * se
    return PowerLaw(exponent=b, prefactor=float(np.exp(a)), stderr=se,
                    ci95=(b - half, b + half), r2=1.0 if tss == 0 else 1.0 - rss / tss,
                    n_points=n)
