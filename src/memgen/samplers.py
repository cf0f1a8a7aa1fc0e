"""Samplers: every one is ``(denoiser, x, sigmas, *, generator=None, callback=None) -> x``.

Variance-exploding coordinates (Karras et al. 2022): x starts at noise level sigmas[0]
and is carried down the decreasing ladder ``sigmas``; the score at σ is
(D(x, σ) − x)/σ² for a denoiser D (see ``memgen.denoisers``). The last entry of
``sigmas`` may be 0 (a final denoising step) or the level at which to stop.
"""

from __future__ import annotations

import math

import torch


def ve_sigmas(sigma_max: float, sigma_min: float, steps: int) -> torch.Tensor:
    """Geometric ladder of ``steps`` noise levels from sigma_max down to sigma_min (float64)."""
    if not sigma_max >= sigma_min > 0 or steps < 1:
        raise ValueError("need sigma_max >= sigma_min > 0 and steps >= 1")
    return torch.logspace(math.log10(sigma_max), math.log10(sigma_min), steps,
                          dtype=torch.float64)


@torch.no_grad()
def sample_euler_maruyama(denoiser, x, sigmas, *, generator=None, callback=None):
    """Reverse VE SDE, Euler–Maruyama (Song et al. 2021, "reverse diffusion" predictor):
    x ← x + (σ_i² − σ_{i+1}²)·score + √(σ_i² − σ_{i+1}²)·z."""
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        score = (denoiser(x, s) - x) / s**2
        var = s**2 - s_next**2
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x = x + var * score + math.sqrt(var) * noise * (s_next > 0)
        if callback is not None:
            callback(i, x, s_next)
    return x


@torch.no_grad()
def sample_heun(denoiser, x, sigmas, *, generator=None, callback=None):
    """Probability-flow ODE dx/dσ = (x − D(x, σ))/σ, Heun's 2nd order (Karras et al. 2022,
    Alg. 1); deterministic, so ``generator`` is unused."""
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        d = (x - denoiser(x, s)) / s
        x_next = x + (s_next - s) * d
        if s_next > 0:
            d_next = (x_next - denoiser(x_next, s_next)) / s_next
            x_next = x + (s_next - s) * (d + d_next) / 2
        x = x_next
        if callback is not None:
            callback(i, x, s_next)
    return x
