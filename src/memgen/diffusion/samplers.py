"""Samplers: every one is ``(denoiser, x, sigmas, *, clip=None, generator=None,
callback=None, options=None) -> x``.

Variance-exploding coordinates (Karras et al. 2022): x starts at noise level sigmas[0]
and is carried down the decreasing ladder ``sigmas``; the score at σ is
(D(x, σ) − x)/σ² for a denoiser D (see ``memgen.diffusion.denoisers``). The last entry of
``sigmas`` may be 0 (a final denoising step) or the level at which to stop.
A VP model is sampled through ``memgen.diffusion.schedules.VPSchedule.sigmas()`` (x_ve = x_vp/√ᾱ).

Randomness comes only from ``generator``: None (torch's global RNG), a torch.Generator,
or a ``StackedGenerator`` (one stream per sample, so a sample never depends on its batch).
``callback(info)`` is called after step i with the dict info = {"x": the new x, "i": i,
"sigma": σ_i, "sigma_next": σ_{i+1}, "denoised": x̂₀ = D(x, σ_i) at the step's start}
(k-diffusion's convention). Samplers run under ``torch.inference_mode`` and return an
ordinary tensor; the tensors a callback sees are inference tensors (clone one to change it
in place or to use it with autograd later), and a denoiser that needs autograd inside
opens ``torch.inference_mode(False)`` on a clone of its input. A sampler's own settings
(DDIM's η) come in the ``options`` mapping, with the defaults of ``SAMPLER_OPTIONS``;
``sampler_options`` picks a sampler's own from a caller's settings. Nothing is clipped unless asked:
``clip=(lo, hi)`` clamps every x̂₀ = D(x, σ) to [lo, hi] (Ho et al.'s clip_denoised), so the
sampler then follows that clipped field, not the model's own ODE/SDE.

Starting points (``GaussianPrior``): the standard start N(0, σ₀² I) (VE; N(0, (1 + σ₀²) I) for
VP, DDPM's x_T ~ N(0, I)), or the forward process's own law at σ₀, N(μ, σ₀² I + Σ) with the
training set's mean μ and covariance Σ (``forward_prior``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from memgen.errors import UserError


def ve_sigmas(sigma_max: float, sigma_min: float, steps: int) -> torch.Tensor:
    """Geometric ladder of ``steps`` noise levels from sigma_max down to sigma_min (float64)."""
    if not sigma_max >= sigma_min > 0 or steps < 1:
        raise UserError("need sigma_max >= sigma_min > 0 and steps >= 1")
    return torch.logspace(math.log10(sigma_max), math.log10(sigma_min), steps,
                          dtype=torch.float64)


# ------------------------------------------------------------------------------ noise


class StackedGenerator:
    """One random stream per sample (the idea of NVlabs/edm's ``StackedRandomGenerator``).

    Draws for a batch are the per-sample draws stacked along dim 0, so sample k's noise
    depends only on seeds[k], never on the batch it is drawn in. A seed is a non-negative
    int of any size or a tuple of them, e.g. (set seed, sample index). The streams are
    numpy PCG64 generators keyed by the full seed: torch's CPU generator keeps only the
    low 32 bits of a seed, which would make sample i of set s and sample i of set s + 2³²
    — and, by the birthday bound, about a hundred pairs in a million hashed seeds —
    identical. Draws are made in float64 on the CPU and cast to the requested dtype.
    """

    def __init__(self, seeds: Sequence, device: str | torch.device = "cpu"):
        seeds = list(seeds)
        if not seeds:
            raise UserError("seeds must be non-empty")
        self.device = torch.device(device)
        self.generators = [np.random.Generator(np.random.PCG64(_seed_sequence(s)))
                           for s in seeds]
        self._ahead = np.empty((len(seeds), 0))  # normals drawn ahead: one row per stream

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape, *, dtype=None, device=None) -> torch.Tensor:
        """(len(seeds), ...) standard normal draws, row k from stream k."""
        shape = tuple(shape)
        if not shape or shape[0] != len(self):  # a caller's bug, not the user's input
            raise ValueError(f"leading dimension {shape[:1]} must equal the number of "
                             f"seeds ({len(self)})")
        size = int(np.prod(shape[1:], dtype=np.int64))
        missing = size - self._ahead.shape[1]
        if missing > 0:
            fresh = np.empty((len(self), max(missing, _DRAW_AHEAD)))
            for g, row in zip(self.generators, fresh):
                g.standard_normal(out=row)
            self._ahead = np.concatenate([self._ahead, fresh], 1) if self._ahead.size else fresh
        draws, self._ahead = self._ahead[:, :size], self._ahead[:, size:]
        # numpy's normals come one after another, so a block drawn ahead holds the same
        # values, in the same order, as the draws it replaces: grouping never matters.
        out = torch.from_numpy(np.ascontiguousarray(draws).reshape(shape))
        out = out.to(dtype=dtype or torch.get_default_dtype())
        return out.to(device if device is not None else self.device)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return self.randn(x.shape, dtype=x.dtype, device=x.device)


# normals drawn per stream at a time, at least: small draws (the toy's noise, 2 a step)
# share a numpy call; the samplers draw several steps' noise at once (_noises)
_DRAW_AHEAD = 512


def _seed_sequence(seed) -> np.random.SeedSequence:
    entropy = [int(v) for v in seed] if isinstance(seed, (tuple, list)) else int(seed)
    if min(entropy if isinstance(entropy, list) else [entropy]) < 0:
        raise UserError(f"seeds must be non-negative, got {seed}")
    return np.random.SeedSequence(entropy)


def _noise(x: torch.Tensor, generator) -> torch.Tensor:
    """Standard normal noise shaped like x from None, a torch.Generator or a StackedGenerator."""
    if isinstance(generator, StackedGenerator):
        return generator.randn_like(x)
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    raise UserError("generator must be None, a torch.Generator or a StackedGenerator, "
                     f"got {type(generator).__name__}")


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
    return sigma_max * _noise(like, generator)


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
            return self.std * _normal(shape, generator).to(device=device, dtype=dtype)
        n, size = shape[0], math.prod(shape[1:])
        x = self.std * _normal((n, size), generator, torch.float64)  # (n, D)
        if self.mean is not None:
            x = x + self.mean.to(x.device)
        if self.factor is not None:
            w = _normal((n, len(self.factor)), generator, torch.float64)  # (n, r)
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


def _normal(shape, generator, dtype=None) -> torch.Tensor:
    """Standard normals of ``shape`` from None, a torch.Generator or a StackedGenerator."""
    if isinstance(generator, StackedGenerator):
        return generator.randn(shape, dtype=dtype)
    return _noise(torch.empty(shape, dtype=dtype), generator)


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


def _levels(sigmas) -> list[float]:
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


# ------------------------------------------------------------------- the loops' parts
#
# A sampler's loop does the network's work and little else: the denoiser at each level and
# every per-step coefficient are made before the loop (``_denoise_steps``; a coefficient is
# a Python number, which an operation rounds as the textbook's does, with no tensor per
# step), noise comes in blocks of steps where that gives the same numbers (``_noises``), the
# per-step views of a table are made a chunk at a time, and the arithmetic runs in place on
# the step's own temporaries, in the order and with the roundings of the textbook
# expressions each docstring gives: the same numbers, bit for bit. Euler–Maruyama
# is the exception: its step reads the residual D(x, σ) − x straight from the network
# (``_residual_fields``: σF rounded once, not the difference of x + σF and x) and adds it
# with one fused product (SAMPLER_REVISIONS).


def _denoise_steps(denoiser, levels: list[float], x: torch.Tensor, clip) -> list:
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


def _residual_fields(denoiser, levels: list[float], x: torch.Tensor, clip) -> tuple:
    """(c, f) with D(x, σ_i) − x = c_i·f(x, i) at the levels σ_i of ``levels``: the
    denoiser's ``residuals_at_levels`` (``memgen.diffusion.denoisers.Denoiser``), or
    (None, f) with f(x, i) = D(x, σ_i) itself where it has none or where D is clamped
    (``clip``)."""
    at_levels = getattr(denoiser, "residuals_at_levels", None)
    fields = None if clip is not None or at_levels is None else at_levels(levels, x)
    if fields is None:
        steps = _denoise_steps(denoiser, levels, x, clip)
        fields = None, lambda y, i: steps[i](y)
    return fields


def _numbers(values: list[float], x: torch.Tensor) -> torch.Tensor:
    """Numbers (L,) on x's device for x's arithmetic (a block's product), sent in one
    transfer: in x's dtype (float32 for lower precisions), as an operation on x rounds a
    Python number, so that one of them gives the numbers the Python number gives."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    return torch.tensor(values, dtype=torch.float64).to(x.device, dtype)


_NOISE_BLOCK = 2**20  # numbers per block of noise drawn ahead (_noises)
_ROWS = 64  # per-step views made at a time: none is kept alive for the whole loop


def _noises(x: torch.Tensor, generator, scales: list[float]):
    """c_k · z_k for the standard normal draws z_k shaped like x that a sampler makes, in
    order, with c_k = scales[k]: one ``_noise`` each, or several steps' at a time (one
    draw and one product a block) where the numbers do not depend on how draws are
    grouped (``_draws_group``)."""
    if not _draws_group(x, generator):
        for c in scales:
            yield _noise(x, generator) * c
        return
    per = max(1, _NOISE_BLOCK // x.numel())
    for start in range(0, len(scales), per):
        c = _numbers(scales[start:start + per], x).view(-1, *([1] * x.ndim))
        if isinstance(generator, StackedGenerator):
            block = generator.randn((len(x), len(c), *x.shape[1:]), dtype=x.dtype,
                                    device=x.device).transpose(0, 1).contiguous()
        else:
            block = torch.randn((len(c), *x.shape), generator=generator, dtype=x.dtype)
        block.mul_(c)  # (k, B, ...)
        for rows in block.split(_ROWS):
            yield from rows.unbind(0)


def _draws_group(x: torch.Tensor, generator) -> bool:
    """Whether one draw of k·n normals gives the numbers of k draws of n = x.numel():
    always for a StackedGenerator (numpy's normals come one after another), unless a
    subclass has its own ``randn_like`` (``memgen.probes.recovery``: called once a draw,
    as that is); for torch's CPU generators (a torch.Generator, or None with x on the
    CPU) where x is float32 or float64 and n a multiple of 16, as torch's CPU ``normal_``
    turns its uniforms into normals 16 at a time (checked in tests/test_samplers.py)."""
    if isinstance(generator, StackedGenerator):
        return type(generator).randn_like is StackedGenerator.randn_like
    if not (generator is None or isinstance(generator, torch.Generator)):
        return False  # _noise refuses it
    device = x.device if generator is None else generator.device
    return (device.type == x.device.type == "cpu" and x.numel() % 16 == 0
            and x.dtype in (torch.float32, torch.float64))


def _inference(sampler):
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


# --------------------------------------------------------------------------- samplers


def _report(callback, i: int, x, s: float, s_next: float, denoised) -> None:
    if callback is not None:
        callback({"x": x, "i": i, "sigma": s, "sigma_next": s_next, "denoised": denoised})


@_inference
def sample_euler_maruyama(denoiser, x, sigmas, *, clip=None, generator=None, callback=None,
                          options=None):
    """Reverse VE SDE, Euler–Maruyama (Song et al. 2021, "reverse diffusion" predictor):
    x ← x + (σ_i² − σ_{i+1}²)·score + √(σ_i² − σ_{i+1}²)·z  (no noise on a step to 0).

    score = r/σ_i² for the residual r = D(x, σ_i) − x, which a network denoiser gives as
    c_i·f(x, i) without forming D (``residuals_at_levels``: σ·F for a score network, exact
    where D − x would cancel digits): a step is x + (var c_i/σ²)·f + √var·z, two sums in
    place.
    """
    _own_options("euler_maruyama", options)
    levels = _levels(sigmas)
    scales, field = _residual_fields(denoiser, levels[:-1], x, clip)
    var = [s**2 - t**2 for s, t in zip(levels, levels[1:])]
    gain = [v / s**2 for v, s in zip(var, levels)]  # var · score = (var/σ²) r
    noises = _noises(x, generator, [math.sqrt(v) * (t > 0) for v, t in zip(var, levels[1:])])
    x = x.clone()  # stepped in place, unless a callback keeps each x
    if scales is not None and callback is None:  # the network's own residual, in place
        for i, alpha, z in zip(range(len(var)), [g * c for g, c in zip(gain, scales)], noises):
            f = field(x, i)
            if f.dtype != x.dtype:  # a wider output moves the arithmetic to its dtype
                x = x.to(torch.promote_types(x.dtype, f.dtype))
            x.add_(f, alpha=alpha).add_(z)  # + √var · z · (σ_{i+1} > 0)
        return x
    for i in range(len(var)):
        f, c, x0 = field(x, i), 1.0, None
        if scales is None:  # f is D(x, σ) itself: r = D − x
            x0, f = f, f - x
        else:
            c = scales[i]
        if f.dtype != x.dtype:  # a wider output moves the arithmetic to its dtype, as x + f
            x = x.to(torch.promote_types(x.dtype, f.dtype))  # would, with a callback or not
        if callback is None:
            x.add_(f, alpha=gain[i] * c).add_(next(noises))  # + √var · z · (σ_{i+1} > 0)
            continue
        x0 = (f * c).add_(x) if x0 is None else x0
        x = x.add(f, alpha=gain[i] * c).add_(next(noises))
        _report(callback, i, x, levels[i], levels[i + 1], x0)
    return x


@_inference
def sample_heun(denoiser, x, sigmas, *, clip=None, generator=None, callback=None,
                options=None):
    """Probability-flow ODE dx/dσ = (x − D(x, σ))/σ, Heun's 2nd order (Karras et al. 2022,
    Alg. 1); Euler on a step to 0; deterministic, so ``generator`` is unused."""
    _own_options("heun", options)
    levels = _levels(sigmas)
    positive = [s for s in levels if s > 0]  # D runs at every level but a final 0
    steps = _denoise_steps(denoiser, positive, x, clip)
    h = [t - s for s, t in zip(levels, levels[1:])]  # s_next − s
    for i, (s, s_next) in enumerate(zip(levels, levels[1:])):
        x0 = steps[i](x)
        d = (x - x0).div_(positive[i])
        x_next = x + d * h[i]
        if s_next > 0:
            d_next = (x_next - steps[i + 1](x_next)).div_(positive[i + 1])
            x_next = x + d.add_(d_next).mul_(h[i]).div_(2)  # (s_next − s)(d + d_next)/2
        x = x_next
        _report(callback, i, x, s, s_next, x0)
    return x


@_inference
def sample_ddpm(denoiser, x, sigmas, *, clip=None, generator=None, callback=None,
                options=None):
    """DDPM ancestral sampling (Ho et al. 2020, Alg. 2) in VE coordinates: with x̂0 = D(x, s),
    x' ~ N(x̂0 + (s'²/s²)(x − x̂0), s'²(s² − s'²)/s² I); a step to 0 returns x̂0.

    Proof that this is Ho's step for the VPSchedule ladder: (1) dividing by a_t = √ᾱ_t turns
    x_t = √α_t x_{t−1} + √β_t ε into the random walk x_t = x_{t−1} + √(σ_t² − σ_{t−1}²) ε
    (σ_t² − σ_{t−1}² = 1/ᾱ_t − 1/ᾱ_{t−1} = β_t/ᾱ_t); (2) the posterior of a Gaussian random
    walk between x0 and x_t is the Brownian bridge above, which times a_{t−1} is q(x_{t−1} |
    x_t, x0) of Ho's eq. 7 (mean coefficients β_t √ᾱ_{t−1}/(1−ᾱ_t), √α_t(1−ᾱ_{t−1})/(1−ᾱ_t),
    variance β̃_t); with x̂0 = (x_t − √(1−ᾱ_t) ε̂)/√ᾱ_t that is Alg. 2, z = 0 at the last step.
    """
    _own_options("ddpm", options)
    levels = _levels(sigmas)
    pairs = list(zip(levels, levels[1:]))
    steps = _denoise_steps(denoiser, levels[:-1], x, clip)
    keep = [(t / s) ** 2 for s, t in pairs]  # s'²/s²
    noises = _noises(x, generator, [t * math.sqrt(1 - q) for q, (_, t) in zip(keep, pairs)
                                    if t > 0])
    for i, (s, s_next) in enumerate(pairs):
        x0 = steps[i](x)
        if s_next > 0:  # x0 + r (x − x0) + s' √(1 − r) z
            x = (x0 + (x - x0).mul_(keep[i])).add_(next(noises))
        else:
            x = x0
        _report(callback, i, x, s, s_next, x0)
    return x


@_inference
def sample_ddim(denoiser, x, sigmas, *, clip=None, generator=None, callback=None,
                options=None):
    """DDIM (Song, Meng & Ermon 2021, eq. 12) in VE coordinates: ε̂ = (x − x̂0)/s,
    x' = x̂0 + √(s'² − c²) ε̂ + c z with c = η s' √((s² − s'²)/s²); options: {"eta": η}.

    η = 0 (the default): deterministic DDIM, x' = x̂0 + (s'/s)(x − x̂0), which is Euler's
    method for the PF-ODE in σ (Karras et al. 2022, §4); η = 1: the ancestral variance,
    i.e. ``sample_ddpm``.
    """
    eta = _own_options("ddim", options)["eta"]
    if not 0 <= eta <= 1:
        raise UserError(f"eta must lie in [0, 1], got {eta}")
    levels = _levels(sigmas)
    pairs = list(zip(levels, levels[1:]))
    steps = _denoise_steps(denoiser, levels[:-1], x, clip)
    c = [eta * t * math.sqrt(1 - (t / s) ** 2) for s, t in pairs]
    sig = levels[:-1]
    gain = [math.sqrt(max(t**2 - ci**2, 0.0)) for ci, (_, t) in zip(c, pairs)]
    noises = _noises(x, generator, [ci for ci in c if ci > 0])
    for i, (s, s_next) in enumerate(pairs):
        x0 = steps[i](x)
        x = x0 + (x - x0).div_(sig[i]).mul_(gain[i])  # x0 + √(s'² − c²) ε̂, ε̂ = (x − x0)/s
        if c[i] > 0:
            x.add_(next(noises))  # + c z
        _report(callback, i, x, s, s_next, x0)
    return x


@torch.no_grad()
def retrieve_fixed_point(denoiser, x, sigma: float, *, tol: float = 1e-6, max_iter: int = 500):
    """x ← D(x, σ) until no coordinate moves more than ``tol`` (or ``max_iter`` rounds).

    For the exact denoiser this is the fixed-point (CCCP) retrieval on the empirical energy
    E_σ, which never raises it: every sample ends in the attractor whose basin it is in —
    a stored pattern, or a mixture minimum where E_σ has them (spurious states).
    """
    for _ in range(max_iter):
        x_next = denoiser(x, sigma)
        done = (x_next - x).abs().max() <= tol
        x = x_next
        if done:
            break
    return x


def truncate_ladder(sigmas: torch.Tensor, stop_sigma: float) -> torch.Tensor:
    """The levels of a decreasing ladder above ``stop_sigma``, then stop_sigma itself."""
    if not stop_sigma > 0:
        raise UserError(f"stop_sigma must be positive, got {stop_sigma}")
    kept = sigmas[sigmas > stop_sigma]
    return torch.cat([kept, kept.new_full((1,), stop_sigma)])


SAMPLERS = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "euler_maruyama": sample_euler_maruyama,
    "heun": sample_heun,
}
# the revision of each sampler's arithmetic, where it is not the first: a sample set drawn
# by an older revision differs in its last bits, so a sweep's cache keys name it
# (``memgen.experiments.stages.generate_key``). euler_maruyama 2: the residual step.
SAMPLER_REVISIONS = {"euler_maruyama": 2}
# each sampler's own settings, with their defaults (what its ``options`` may hold)
SAMPLER_OPTIONS = {"ddpm": {}, "ddim": {"eta": 0.0}, "euler_maruyama": {}, "heun": {}}


def get_sampler(name: str):
    """The sampler registered under ``name`` (see ``SAMPLERS``)."""
    if name not in SAMPLERS:
        raise UserError(f"unknown sampler {name!r}; known: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def sampler_options(name: str, settings: Mapping) -> dict:
    """The entries of ``settings`` that sampler ``name`` reads (``SAMPLER_OPTIONS``), e.g.
    a config's eta for DDIM only: what to pass as its ``options``."""
    get_sampler(name)
    return {k: v for k, v in settings.items() if k in SAMPLER_OPTIONS[name]}


def _own_options(name: str, options: Mapping | None) -> dict:
    """The sampler's settings: its defaults, updated by ``options``; ValueError for a key
    it does not read."""
    defaults = SAMPLER_OPTIONS[name]
    unknown = sorted(set(options or {}) - set(defaults))
    if unknown:
        raise UserError(f"sampler {name!r} has no option {', '.join(map(repr, unknown))}; "
                        f"its options: {', '.join(defaults) or 'none'}")
    return {**defaults, **(options or {})}
