"""Noise ladders: the decreasing VE levels σ_0 > σ_1 > … a sampler walks.

A ladder is a float64 tensor (or a sequence of numbers) of variance-exploding noise levels
(Karras et al. 2022): x starts at σ_0 and is carried down to the last entry, which may be 0
(a final denoising step) or the level at which to stop. A VP model's ladder comes from
``memgen.diffusion.schedules.VPSchedule.sigmas()`` (x_ve = x_vp/√ᾱ).
"""

from __future__ import annotations

import math

import torch

from memgen.errors import UserError


def ve_sigmas(sigma_max: float, sigma_min: float, steps: int) -> torch.Tensor:
    """Geometric ladder of ``steps`` noise levels from sigma_max down to sigma_min (float64)."""
    if not sigma_max >= sigma_min > 0 or steps < 1:
        raise UserError("need sigma_max >= sigma_min > 0 and steps >= 1")
    return torch.logspace(math.log10(sigma_max), math.log10(sigma_min), steps,
                          dtype=torch.float64)


def truncate_ladder(sigmas: torch.Tensor, stop_sigma: float) -> torch.Tensor:
    """The levels of a decreasing ladder above ``stop_sigma``, then stop_sigma itself."""
    if not stop_sigma > 0:
        raise UserError(f"stop_sigma must be positive, got {stop_sigma}")
    kept = sigmas[sigmas > stop_sigma]
    return torch.cat([kept, kept.new_full((1,), stop_sigma)])


def ladder_levels(sigmas) -> list[float]:
    """sigmas as floats, checked: non-increasing, every level but the last > 0 (a tensor is
    read in one transfer, not one per level)."""
    levels = [float(s) for s in (sigmas.tolist() if isinstance(sigmas, torch.Tensor) else sigmas)]
    if len(levels) < 1:
        raise UserError("sigmas must be non-empty")
    if any(not a >= b for a, b in zip(levels, levels[1:])) or levels[-1] < 0:
        raise UserError("sigmas must be non-increasing and >= 0")
    if any(not s > 0 for s in levels[:-1]):
        raise UserError("only the last entry of sigmas may be 0")
    return levels
