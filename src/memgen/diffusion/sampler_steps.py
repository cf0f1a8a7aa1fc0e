"""The parts of a sampler's loop: the denoiser at each level, clipping, the callback, the
inference mode (``memgen.diffusion.samplers`` puts them together).

A sampler's loop does the network's work and little else: the denoiser at each level and
every per-step coefficient are made before the loop (``denoise_steps``; a coefficient is
a Python number, which an operation rounds as the textbook's does, with no tensor per
step), noise comes in blocks of steps where that gives the same numbers
(``memgen.diffusion.rng.noise_stream``), the per-step views of a table are made a chunk at a
time, and the arithmetic runs in place on the step's own temporaries, in the order and
with the roundings of the textbook expressions each docstring gives: the same numbers,
bit for bit. Euler–Maruyama is the exception: its step reads the residual D(x, σ) − x
straight from the network (``residual_fields``: σF rounded once, not the difference of
x + σF and x) and adds it with one fused product (its spec's revision 2).
"""

from __future__ import annotations

import functools

import torch

from memgen.errors import UserError


def clipped(denoiser, clip):
    """D(x, σ) clamped to [lo, hi] for clip = (lo, hi) (Ho et al. 2020's clip_denoised:
    x̂₀ kept in the data range); the denoiser itself for clip = None."""
    if clip is None:
        return denoiser
    lo, hi = _clip_range(clip)
    return lambda x, sigma: denoiser(x, sigma).clamp(lo, hi)


def _clip_range(clip) -> tuple[float, float]:
    if len(clip) != 2 or not float(clip[0]) < float(clip[1]):
        raise UserError(f"clip must be a pair lo < hi, got {clip}")
    return float(clip[0]), float(clip[1])


def denoise_steps(denoiser, levels: list[float], x: torch.Tensor, clip) -> list:
    """x ↦ D(x, σ) for each σ of ``levels``, clamped to clip = (lo, hi) if given: the
    denoiser's ``at_levels`` where it has one (``memgen.diffusion.denoisers.Denoiser``),
    else D itself at each level."""
    at_levels = getattr(denoiser, "at_levels", None)
    if at_levels is not None:
        steps = at_levels(levels, x)
    else:
        steps = [lambda y, s=s: denoiser(y, s) for s in levels]
    if clip is None:
        return steps
    lo, hi = _clip_range(clip)
    return [lambda y, f=f: f(y).clamp(lo, hi) for f in steps]


def residual_fields(denoiser, levels: list[float], x: torch.Tensor, clip) -> tuple:
    """(c, f) with D(x, σ_i) − x = c_i·f(x, i) at the levels σ_i of ``levels``: the
    denoiser's ``residuals_at_levels`` (``memgen.diffusion.denoisers.Denoiser``), or
    (None, f) with f(x, i) = D(x, σ_i) itself where it has none or where D is clamped
    (``clip``)."""
    at_levels = getattr(denoiser, "residuals_at_levels", None)
    fields = None if clip is not None or at_levels is None else at_levels(levels, x)
    if fields is None:
        steps = denoise_steps(denoiser, levels, x, clip)
        fields = None, lambda y, i: steps[i](y)
    return fields


def inference(sampler):
    """The sampler run under ``torch.inference_mode`` (no version counters or view
    tracking: the toy's step, the network aside, takes 4.2 µs against 5.05 under
    ``no_grad``; the network's forwards cost the same), its result copied out of the
    mode: an ordinary tensor, for autograd and in-place use."""
    @functools.wraps(sampler)
    def run(*args, **kwargs):
        with torch.inference_mode():
            x = sampler(*args, **kwargs)
        return x.clone()
    return run


def report(callback, i: int, x, s: float, s_next: float, denoised) -> None:
    """callback(info) after step i, k-diffusion's convention (``memgen.diffusion.samplers``)."""
    if callback is not None:
        callback({"x": x, "i": i, "sigma": s, "sigma_next": s_next, "denoised": denoised})
