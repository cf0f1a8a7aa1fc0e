"""The relative energy of two points, ΔE = E_σ(x_ref) − E_σ(x), along a path.

The model is seen only through a denoiser D(x, σ) in variance-exploding (VE) coordinates
(``memgen.diffusion.denoisers``): x = y + σ n, so at noise level σ

    score      s_σ(x)   = (D(x, σ) − x)/σ²
    energy     E_σ(x)   = −log p_σ(x),   ∇E_σ(x) = (x − D(x, σ))/σ²

Symbols → names (B pairs):
    ΔE     E_σ(x_ref) − E_σ(x) (Raya & Ambrogioni 2023)            ``RelativeEnergy.delta``

For an ε-network, ``EpsDenoiser`` converts with ᾱ_t = Π_{s≤t}(1 − β_s) (the public
reference code used Π β_t in its relative-energy code); build it with ``clip=False``, since
clipping x̂ to [−1, 1] is not the model's score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from memgen.errors import UserError
from memgen.probes.checks import F64, check_chunk, check_points, check_sigma


@dataclass(frozen=True)
class RelativeEnergy:
    """ΔE = E_σ(x_ref) − E_σ(x) per pair, with its quadrature error. All (B,)."""

    delta: torch.Tensor  # float64
    error: torch.Tensor  # float64, estimated absolute error of delta
    converged: torch.Tensor  # bool, the tolerance was met before max_panels
    panels: torch.Tensor  # int64, Gauss–Legendre panels of the accepted estimate


def relative_energy(denoiser, x: torch.Tensor, x_ref: torch.Tensor, sigma: float, *,
                    rtol: float = 1e-8, atol: float = 1e-10, order: int = 16,
                    max_panels: int = 1024, chunk: int | None = None) -> RelativeEnergy:
    """ΔE(x → x_ref) = ∫_0^{π/2} ∇E_σ(x(α))·x'(α) dα (Raya & Ambrogioni 2023), batched.

    Path x(α) = cos α·x + sin α·x_ref, x'(α) = −sin α·x + cos α·x_ref, ∇E_σ = (x − D(x, σ))/σ².
    x, x_ref: (B, ...) pairs. Quadrature: ``order``-point Gauss–Legendre on m = 1, 2, 4, …
    equal panels of [0, π/2], all nodes of all unfinished pairs in one denoiser call
    (``chunk`` rows at a time). A pair stops when |I_2m − I_m| ≤ max(atol, rtol|I_2m|,
    roundoff); its error is |I_2m − I_m| + roundoff, roundoff = 50 ε ∫|g| (QUADPACK's
    term, ε of x's dtype) — an over-estimate for the smooth integrand. Integrands are
    summed in float64; pass float64 x (and model) for float64 accuracy. σ (e.g. a small σ,
    or ``schedule.sigma(t)``) is the caller's choice; for a learned, non-conservative score
    ΔE depends on the path, and this is the quarter circle of the reference.
    """
    x, x_ref, sigma = check_points(x, "x"), check_points(x_ref, "x_ref"), check_sigma(sigma)
    if x.shape != x_ref.shape:
        raise UserError(f"x and x_ref must have one shape, got {tuple(x.shape)} and "
                         f"{tuple(x_ref.shape)}")
    if int(order) != order or order < 1 or int(max_panels) != max_panels or max_panels < 2:
        raise UserError("order must be an integer >= 1 and max_panels an integer >= 2")
    if not (rtol >= 0 and atol >= 0):
        raise UserError(f"rtol and atol must be >= 0, got {rtol}, {atol}")
    check_chunk(chunk)
    integrate = partial(_path_integral, denoiser, sigma, np.polynomial.legendre.leggauss(order),
                        chunk)
    eps = 50 * torch.finfo(x.dtype).eps
    delta, _ = integrate(x, x_ref, 1)
    error, panels = torch.full_like(delta, math.inf), torch.ones(len(x), dtype=torch.int64)
    done, m = torch.zeros(len(x), dtype=torch.bool), 1
    while not done.all() and m < max_panels:
        m, idx = 2 * m, (~done).nonzero().squeeze(1)
        cur, mass = integrate(x[idx], x_ref[idx], m)
        diff, roundoff = (cur - delta[idx]).abs(), eps * mass
        tol = torch.clamp(rtol * cur.abs(), min=atol).maximum(roundoff)
        delta[idx], error[idx], panels[idx], done[idx] = cur, diff + roundoff, m, diff <= tol
    return RelativeEnergy(delta, error, done, panels)


def _path_integral(denoiser, sigma, rule, chunk, x, x_ref, panels) -> tuple:
    """Composite Gauss–Legendre of g(α) = ∇E_σ(x(α))·x'(α) on ``panels`` equal panels:
    (∫g, ∫|g|), each (B,) float64."""
    nodes, weights = (torch.as_tensor(v, dtype=F64) for v in rule)
    width = (math.pi / 2) / panels
    alpha = (width * (torch.arange(panels, dtype=F64)[:, None] + (nodes + 1) / 2)).reshape(-1)
    w = (width / 2 * weights).repeat(panels)  # (M,)
    b, shape = len(x), x.shape[1:]
    x64, ref64 = x.reshape(b, 1, -1).double(), x_ref.reshape(b, 1, -1).double()
    step = max(1, (chunk or b * len(alpha)) // b)
    parts = []
    for a in alpha.to(x.device).split(step):
        c, s = a.cos()[None, :, None], a.sin()[None, :, None]  # (1, k, 1)
        points = (c * x64 + s * ref64).to(x.dtype)  # (B, k, D)
        with torch.no_grad():
            den = denoiser(points.reshape(-1, *shape), sigma).reshape(points.shape)
        grad = (points - den).double() / sigma**2
        parts.append((grad * (c * ref64 - s * x64)).sum(-1))  # (B, k)
    g = torch.cat(parts, dim=1).cpu()
    return g @ w, g.abs() @ w


__all__ = ["RelativeEnergy", "relative_energy"]
