"""Starting points: the law x is drawn from at the top σ₀ of a ladder (VE coordinates).

The standard start N(0, σ₀² I) (VE; N(0, (1 + σ₀²) I) for VP, DDPM's x_T ~ N(0, I)), or
the forward process's own law at σ₀, N(μ, σ₀² I + Σ) with the training set's mean μ and
covariance Σ (``forward_prior``). Draws come from a generator of ``memgen.diffusion.rng``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from memgen.diffusion.rng import StackedGenerator, noise_like, normal
from memgen.errors import UserError


def initial_noise(shape, sigma_max: float, generator=None, *, dtype=None,
                  device=None) -> torch.Tensor:
    """x ~ N(0, sigma_max² I) of the given shape: the start of a VE ladder.

    DDPM's x_T ~ N(0, I) in VP coordinates is N(0, (1 + σ_{T−1}²) I) in VE coordinates,
    i.e. ``sigma_max = 1/schedule.scale(T − 1)``; σ_{T−1} alone ignores the data's variance.
    """
    if not sigma_max > 0:
        raise UserError(f"sigma_max must be > 0, got {sigma_max}")
    if device is None and isinstance(generator, StackedGenerator):
        device = generator.device
    like = torch.empty(shape, dtype=dtype, device=device)
    return sigma_max * noise_like(like, generator)


@dataclass(frozen=True, eq=False)
class GaussianPrior:
    """x ~ N(mean, std² I + factorᵀ factor), drawn as x = mean + std·z + w·factor with
    z ~ N(0, I_D) and then w ~ N(0, I_r) from the same stream (VE coordinates).

    std > 0: the isotropic part; mean (D,) and factor (r, D), float64, D the numel of one
    sample, None for none. With neither, ``sample`` is std·z with z drawn in the default
    dtype and cast, exactly as ``memgen.diffusion.generate`` has always drawn its start.
    """

    std: float
    mean: torch.Tensor | None = None
    factor: torch.Tensor | None = None

    def __post_init__(self):
        if not self.std > 0:
            raise UserError(f"std must be > 0, got {self.std}")
        if self.factor is not None and self.factor.ndim != 2:
            raise UserError("factor must be an (r, D) matrix")

    def sample(self, shape, generator=None, *, dtype=None, device=None) -> torch.Tensor:
        """(n, ...) draws in ``dtype`` on ``device`` (the forward part computed in float64)."""
        shape = tuple(shape)
        if self.mean is None and self.factor is None:
            return self.std * normal(shape, generator).to(device=device, dtype=dtype)
        n, size = shape[0], math.prod(shape[1:])
        x = self.std * normal((n, size), generator, torch.float64)  # (n, D)
        if self.mean is not None:
            x = x + self.mean.to(x.device)
        if self.factor is not None:
            w = normal((n, len(self.factor)), generator, torch.float64)  # (n, r)
            x = x + w.to(x.device) @ self.factor.to(x.device)
        return x.reshape(shape).to(device=device, dtype=dtype)


def forward_prior(data: torch.Tensor, sigma: float) -> GaussianPrior:
    """The forward process's law at VE level σ, by its moments: x = y + σ n with y drawn from
    the training set ``data`` (K, ...) has mean μ and covariance σ² I + Σ (Σ the set's own
    covariance, normalised by K: the empirical law the model was trained on). The law itself
    is the mixture (1/K) Σ_i N(y_i, σ² I), Gaussian up to O(Σ/σ²).

    VP models reach the same law: x_T = √ᾱ y + √(1 − ᾱ) n ~ N(√ᾱ μ, ᾱ Σ + (1 − ᾱ) I) is it
    in VE coordinates x = x_T/√ᾱ. factor: the centred data/√K (K ≤ D) or Λ^½ Vᵀ from the
    eigendecomposition Σ = V Λ Vᵀ (K > D; a D × D float64 matrix), so factorᵀfactor = Σ.
    """
    if data.ndim < 2 or len(data) == 0:
        raise UserError("data must be a non-empty (K, ...) tensor")
    flat = torch.as_tensor(data).reshape(len(data), -1).to("cpu", torch.float64)  # (K, D)
    mean = flat.mean(0)
    centred = flat - mean
    if len(flat) <= flat.shape[1]:
        factor = centred / math.sqrt(len(flat))  # (K, D)
    else:
        lam, vec = torch.linalg.eigh(centred.T @ centred / len(flat))
        factor = (vec * lam.clamp(min=0).sqrt()).T  # (D, D), row i = √λ_i v_iᵀ
    return GaussianPrior(float(sigma), mean, factor)
