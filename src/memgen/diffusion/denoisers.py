"""Denoisers D(x, σ) ≈ E[y | x = y + σ n]: the one interface samplers and analyses use.

Convention (Karras et al. 2022, k-diffusion): variance-exploding coordinates, x = y + σ n
with n ~ N(0, I). A variance-preserving model x_t = a y + σ_t n (a = √ᾱ, σ_t² = 1 − ᾱ)
is seen through x = x_t / a at σ = σ_t / a; its parameterization does that conversion. What
a network's output means is its family's parameterization (``memgen.diffusion.parameterization``),
which ``NetworkDenoiser`` binds to the network; the exact denoisers are closed forms
(``EmpiricalDenoiser``: ``memgen.memory.energy.empirical_denoise``). Every denoiser is
built from its source by ``memgen.diffusion.loaders.load_denoiser``.

Denoisers are differentiable in x (for Jacobians, divergences and Hessian-vector
products) and build no graph otherwise: network weights are frozen, and the samplers
run under ``torch.inference_mode()``. The network denoisers also offer ``at_levels``:
D(·, σ) at each level of a ladder, their per-level constants computed once for all (the
samplers' loop, ``memgen.diffusion.samplers``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from memgen.diffusion.parameterization import EpsPrediction, ScorePrediction
from memgen.errors import UserError
from memgen.memory.energy import empirical_denoise

DEFAULT_MEMORY_BUDGET = 256 * 2**20  # bytes for one (batch × patterns) block of weights


class Denoiser(Protocol):
    """x: (B, ...) noisy samples, sigma: scalar or (B,) noise levels -> (B, ...) estimates.

    Optionally also ``at_levels(levels, x)``: for numbers σ_0, σ_1, …, a list of callables
    y ↦ D(y, σ_i) for y like x, with the same numbers as ``D(y, σ_i)``; and
    ``residuals_at_levels(levels, x)``: the residuals D(y, σ_i) − y = σ_i² ∇log p made
    without forming D, as (c, f), numbers c_i and a callable f(y, i) with D(y, σ_i) − y =
    c_i f(y, i) and ``(f(y, i) * c_i).add_(y)`` = D(y, σ_i) to the bit where the network's
    output has y's dtype (None where the denoiser has no such form)."""

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor: ...


class EmpiricalDenoiser:
    """The exact denoiser of the training set: D(x, σ) = Σ_i softmax_i(−‖x − y_i‖²/(2σ²)) y_i.

    It is the posterior mean under the empirical distribution — the optimal diffusion
    model for that training set, which therefore only reproduces training points (the
    positive control that must memorize). patterns: (N, ...) in the data's own shape.

    The math is ``memgen.memory.energy.empirical_denoise`` (σ per row, queries in blocks
    of ``memory_budget`` bytes); this class gives it the ``Denoiser`` interface: samples
    of the data's shape, flattened and cast to the patterns' dtype and back, σ a number
    or (B,).
    """

    def __init__(self, patterns: torch.Tensor, memory_budget: int = DEFAULT_MEMORY_BUDGET):
        if patterns.ndim < 2 or patterns.shape[0] == 0:
            raise UserError("patterns must be a non-empty (N, ...) tensor")
        self.shape = patterns.shape[1:]
        self.patterns = patterns.reshape(patterns.shape[0], -1)
        self.memory_budget = memory_budget

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1).to(self.patterns.dtype)
        sigma = torch.as_tensor(sigma, dtype=flat.dtype, device=flat.device).expand(len(flat))
        out = empirical_denoise(flat, self.patterns, sigma, memory_budget=self.memory_budget)
        return out.reshape(x.shape).to(x.dtype)


class GaussianDenoiser:
    """The exact denoiser of y ~ N(μ, Σ): D(x, σ) = μ + Σ(Σ + σ² I)⁻¹(x − μ) (linear in x).

    The analytic control for samplers and priors: the PF-ODE from N(μ, Σ + σ₀² I) ends in
    N(μ, Σ), each eigendirection (variance λ) scaled by √((λ + σ²)/(λ + σ₀²)) on the way.
    mean: (D,), cov: (D, D); x: (B, D); σ a scalar or (B,).
    """

    def __init__(self, mean: torch.Tensor, cov: torch.Tensor):
        if mean.ndim != 1 or cov.shape != (len(mean), len(mean)):
            raise UserError("need mean (D,) and cov (D, D)")
        self.mean, self.cov = mean, cov

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        mean, cov = self.mean.to(x), self.cov.to(x)
        s2 = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).square().reshape(-1, 1, 1)
        eye = torch.eye(len(mean), dtype=x.dtype, device=x.device)
        gain = cov @ torch.linalg.inv(cov + s2 * eye)  # (1|B, D, D)
        if len(gain) == 1:
            return mean + (x - mean) @ gain[0].T
        return mean + torch.einsum("bij,bj->bi", gain, x - mean)


class NetworkDenoiser:
    """A network F bound to its parameterization, seen as a ``Denoiser``: D(x, σ) =
    ``parameterization.denoise(F, x, σ)``, and its ``at_levels`` / ``residuals_at_levels``.

    The parameterizations (``memgen.diffusion.parameterization``) hold the math and take
    the network as an argument, so that training passes them the module it updates; this
    class is the binding that samplers and probes call as D(x, σ), the only code between
    the two. Built through a family's own class: ``EpsDenoiser`` or ``ScoreDenoiser``.
    """

    def __init__(self, net, parameterization):
        self.net, self.schedule = net, parameterization.schedule
        self.parameterization = parameterization

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        return self.parameterization.denoise(self.net, x, sigma)

    def at_levels(self, levels: Sequence[float], x: torch.Tensor) -> list[Callable]:
        """y ↦ D(y, σ) for each σ of ``levels``, for y like x (``Denoiser``)."""
        return self.parameterization.at_levels(self.net, levels, x)

    def residuals_at_levels(self, levels: Sequence[float], x: torch.Tensor
                            ) -> tuple[list[float], Callable] | None:
        """D(y, σ) − y = c_i·f(y, i) at each σ_i of ``levels`` (``Denoiser``)."""
        return self.parameterization.residuals_at_levels(self.net, levels, x)


class EpsDenoiser(NetworkDenoiser):
    """A VP ε-prediction network seen as a VE denoiser (k-diffusion's DiscreteEpsDDPMDenoiser):
    D(x, σ) = x − σ ε̂(√ᾱ x, t(σ)), ``memgen.diffusion.parameterization.EpsPrediction``.

    What it adds to ``NetworkDenoiser``: ``clip``, which clamps that field to [−1, 1] (Ho et
    al.'s clip_denoised) for analyses that want it; samplers clip on request instead
    (``clip=(lo, hi)``, ``GenerateConfig.clip_denoised``, on by default for ε-networks
    there: the type is what ``memgen.diffusion.generate`` reads for that default).
    """

    def __init__(self, net, schedule, clip: bool = False):
        super().__init__(net, EpsPrediction(schedule))
        self.clip = clip

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        out = super().__call__(x, sigma)
        return out.clamp(-1, 1) if self.clip else out

    def at_levels(self, levels: Sequence[float], x: torch.Tensor) -> list[Callable]:
        """y ↦ D(y, σ) for each σ of ``levels``, for y like x (``Denoiser``), clamped with
        ``clip``."""
        steps = super().at_levels(levels, x)
        return [_clamped(f) for f in steps] if self.clip else steps

    def residuals_at_levels(self, levels: Sequence[float], x: torch.Tensor
                            ) -> tuple[list[float], Callable] | None:
        """D(y, σ) − y = −σ·ε̂ at each σ of ``levels`` (``Denoiser``); None when clipped."""
        return None if self.clip else super().residuals_at_levels(levels, x)


class ScoreDenoiser(NetworkDenoiser):
    """A VE network whose output F is σ times the score, seen as a denoiser: D(x, σ) =
    x + σ F(x, t(σ)), ``memgen.diffusion.parameterization.ScorePrediction``.

    ``NetworkDenoiser`` on that parameterization; the type names the family (the toy's
    learned landscapes accept only it, ``memgen.experiments.landscape``)."""

    def __init__(self, net, schedule):
        super().__init__(net, ScorePrediction(schedule))


def _clamped(step: Callable) -> Callable:
    return lambda x: step(x).clamp(-1, 1)
