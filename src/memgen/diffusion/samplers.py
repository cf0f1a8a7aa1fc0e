"""Samplers: every one is ``(denoiser, x, sigmas, *, clip=None, generator=None,
callback=None, options=None) -> x``, described by its ``SamplerSpec`` in ``SAMPLERS``.

Variance-exploding coordinates (Karras et al. 2022): x starts at noise level sigmas[0]
and is carried down the decreasing ladder ``sigmas`` (``memgen.diffusion.ladders``); the
score at σ is (D(x, σ) − x)/σ² for a denoiser D (see ``memgen.diffusion.denoisers``). The
last entry of ``sigmas`` may be 0 (a final denoising step) or the level at which to stop.
A VP model is sampled through ``memgen.diffusion.schedules.VPSchedule.sigmas()`` (x_ve = x_vp/√ᾱ).

Randomness comes only from ``generator`` (``memgen.diffusion.rng``): None (torch's global
RNG), a torch.Generator, or a ``StackedGenerator`` (one stream per sample, so a sample
never depends on its batch); starting points are drawn by ``memgen.diffusion.priors``.
``callback(info)`` is called after step i with the dict info = {"x": the new x, "i": i,
"sigma": σ_i, "sigma_next": σ_{i+1}, "denoised": x̂₀ = D(x, σ_i) at the step's start}
(k-diffusion's convention). Samplers run under ``torch.inference_mode`` and return an
ordinary tensor; the tensors a callback sees are inference tensors (clone one to change it
in place or to use it with autograd later), and a denoiser that needs autograd inside
opens ``torch.inference_mode(False)`` on a clone of its input. A sampler's own settings
(DDIM's η) come in the ``options`` mapping, with the defaults of its spec's ``options``;
``sampler_options`` picks a sampler's own from a caller's settings. Nothing is clipped unless
asked: ``clip=(lo, hi)`` clamps every x̂₀ = D(x, σ) to [lo, hi] (Ho et al.'s clip_denoised),
so the sampler then follows that clipped field, not the model's own ODE/SDE. The loops'
parts, and how they keep the textbook's numbers, are in ``memgen.diffusion.sampler_steps``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from memgen.diffusion.ladders import ladder_levels
from memgen.diffusion.rng import noise_stream
from memgen.diffusion.sampler_steps import denoise_steps, inference, report, residual_fields
from memgen.errors import UserError

@inference
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
    levels = ladder_levels(sigmas)
    scales, field = residual_fields(denoiser, levels[:-1], x, clip)
    var = [s**2 - t**2 for s, t in zip(levels, levels[1:])]
    gain = [v / s**2 for v, s in zip(var, levels)]  # var · score = (var/σ²) r
    noises = noise_stream(x, generator, [math.sqrt(v) * (t > 0) for v, t in zip(var, levels[1:])])
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
        report(callback, i, x, levels[i], levels[i + 1], x0)
    return x


@inference
def sample_heun(denoiser, x, sigmas, *, clip=None, generator=None, callback=None,
                options=None):
    """Probability-flow ODE dx/dσ = (x − D(x, σ))/σ, Heun's 2nd order (Karras et al. 2022,
    Alg. 1); Euler on a step to 0; deterministic, so ``generator`` is unused."""
    _own_options("heun", options)
    levels = ladder_levels(sigmas)
    positive = [s for s in levels if s > 0]  # D runs at every level but a final 0
    steps = denoise_steps(denoiser, positive, x, clip)
    h = [t - s for s, t in zip(levels, levels[1:])]  # s_next − s
    for i, (s, s_next) in enumerate(zip(levels, levels[1:])):
        x0 = steps[i](x)
        d = (x - x0).div_(positive[i])
        x_next = x + d * h[i]
        if s_next > 0:
            d_next = (x_next - steps[i + 1](x_next)).div_(positive[i + 1])
            x_next = x + d.add_(d_next).mul_(h[i]).div_(2)  # (s_next − s)(d + d_next)/2
        x = x_next
        report(callback, i, x, s, s_next, x0)
    return x


@inference
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
    levels = ladder_levels(sigmas)
    pairs = list(zip(levels, levels[1:]))
    steps = denoise_steps(denoiser, levels[:-1], x, clip)
    keep = [(t / s) ** 2 for s, t in pairs]  # s'²/s²
    noises = noise_stream(x, generator, [t * math.sqrt(1 - q) for q, (_, t) in zip(keep, pairs)
                                    if t > 0])
    for i, (s, s_next) in enumerate(pairs):
        x0 = steps[i](x)
        if s_next > 0:  # x0 + r (x − x0) + s' √(1 − r) z
            x = (x0 + (x - x0).mul_(keep[i])).add_(next(noises))
        else:
            x = x0
        report(callback, i, x, s, s_next, x0)
    return x


@inference
def sample_ddim(denoiser, x, sigmas, *, clip=None, generator=None, callback=None,
                options=None):
    """DDIM (Song, Meng & Ermon 2021, eq. 12) in VE coordinates: ε̂ = (x − x̂0)/s,
    x' = x̂0 + √(s'² − c²) ε̂ + c z with c = η s' √((s² − s'²)/s²); options: {"eta": η}.

    η = 0 (the default): deterministic DDIM, x' = x̂0 + (s'/s)(x − x̂0), which is Euler's
    method for the PF-ODE in σ (Karras et al. 2022, §4); η = 1: the ancestral variance,
    i.e. ``sample_ddpm``.
    """
    eta = _own_options("ddim", options)["eta"]
    levels = ladder_levels(sigmas)
    pairs = list(zip(levels, levels[1:]))
    steps = denoise_steps(denoiser, levels[:-1], x, clip)
    c = [eta * t * math.sqrt(1 - (t / s) ** 2) for s, t in pairs]
    sig = levels[:-1]
    gain = [math.sqrt(max(t**2 - ci**2, 0.0)) for ci, (_, t) in zip(c, pairs)]
    noises = noise_stream(x, generator, [ci for ci in c if ci > 0])
    for i, (s, s_next) in enumerate(pairs):
        x0 = steps[i](x)
        x = x0 + (x - x0).div_(sig[i]).mul_(gain[i])  # x0 + √(s'² − c²) ε̂, ε̂ = (x − x0)/s
        if c[i] > 0:
            x.add_(next(noises))  # + c z
        report(callback, i, x, s, s_next, x0)
    return x



# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class SamplerOption:
    """A setting a sampler reads from its ``options``: its default, its symbol in messages
    (η), the --help line of its ``memgen generate`` flag (--NAME) and the closed interval
    [low, high] its values lie in, which the sampler, ``memgen generate``,
    ``GenerateConfig`` and the sweep's sample section all check.

    Adding one: this in the spec's ``options`` (read there from ``options``) and a field
    of the same name, with this default, on ``memgen.diffusion.generate.Sampling``."""

    default: float
    symbol: str
    help: str
    low: float = -math.inf
    high: float = math.inf

    def interval(self) -> str:
        """[low, high] for messages: "[0, 1]"."""
        return f"[{self.low:g}, {self.high:g}]"

    def admits(self, value: float) -> bool:
        """Whether ``value`` lies in [low, high] (never NaN)."""
        return self.low <= value <= self.high


@dataclass(frozen=True)
class SamplerSpec:
    """Everything memgen knows of a sampler; the CLI, the sweep config, the generate stage's
    cache key, a set's identity record and the recovery probe read it, nothing else.

    name: its key in ``SAMPLERS`` (--sampler, sample.sampler). run: the sampler function.
    title: its name in messages ("DDIM's η"). description: one line for --help.
    options: its own settings by name, with their defaults (what ``options`` may hold).
    deterministic: it draws no noise at its default options, so its output depends on x
        and the ladder alone, never on ``generator`` (DDIM: at η = 0).
    scale_invariant: for every c > 0 its run on the ladder c·u with denoiser D equals,
        up to rounding, its run on the ladder u with D̃(x, u) = D(x, c u) and every
        standard normal z it draws replaced by c·z: its drift reads the ladder only through
        D's levels and ratios of levels (s'/s, (s² − s'²)/s²) and each noise term is
        a level (s, √(s² − s'²)) times z. ``memgen.probes.recovery`` relies on it to run
        each row on its own ladder c_r·u in one call (a ``StackedGenerator`` with
        scale = c); it refuses a sampler without it.
    revision: the revision of its arithmetic where it is not the first (None): a sample
        set drawn by an older revision differs in its last bits, so a sweep's cache keys
        (``memgen.experiments.stages.generate_key``) and a set's identity name it.
    """

    name: str
    run: Callable
    title: str
    description: str
    deterministic: bool
    scale_invariant: bool
    options: Mapping[str, SamplerOption] = field(default_factory=dict)
    revision: int | None = None

    def defaults(self) -> dict:
        """Its options' defaults by name."""
        return {key: option.default for key, option in self.options.items()}


ETA = SamplerOption(0.0, "η", "DDIM η in [0, 1]; ddim only [0: deterministic DDIM].", 0.0, 1.0)
SAMPLERS: dict[str, SamplerSpec] = {spec.name: spec for spec in (
    SamplerSpec("ddpm", sample_ddpm, "DDPM", "ancestral DDPM (Ho et al. 2020, Alg. 2)",
                deterministic=False, scale_invariant=True),
    SamplerSpec("ddim", sample_ddim, "DDIM",
                "DDIM (Song et al. 2021, eq. 12); deterministic at η = 0",
                deterministic=True, scale_invariant=True, options={"eta": ETA}),
    # revision 2: the residual step (``memgen.diffusion.sampler_steps``)
    SamplerSpec("euler_maruyama", sample_euler_maruyama, "Euler–Maruyama",
                "reverse VE SDE, Euler–Maruyama (Song et al. 2021)",
                deterministic=False, scale_invariant=True, revision=2),
    SamplerSpec("heun", sample_heun, "Heun",
                "probability-flow ODE, Heun's 2nd order (Karras et al. 2022, Alg. 1)",
                deterministic=True, scale_invariant=True),
)}


def sampler_spec(name: str) -> SamplerSpec:
    """The spec registered under ``name`` (see ``SAMPLERS``); UserError for an unknown one."""
    if name not in SAMPLERS:
        raise UserError(f"unknown sampler {name!r}; known: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def get_sampler(name: str):
    """The sampler function registered under ``name`` (see ``SAMPLERS``)."""
    return sampler_spec(name).run


def sampler_options(name: str, settings: Mapping) -> dict:
    """The entries of ``settings`` that sampler ``name`` reads (its spec's options), e.g.
    a config's eta for DDIM only: what to pass as its ``options``."""
    spec = sampler_spec(name)
    return {k: v for k, v in settings.items() if k in spec.options}


def option_names() -> list[str]:
    """Every option some registered sampler reads, in registry order, each once."""
    return list(dict.fromkeys(key for spec in SAMPLERS.values() for key in spec.options))


def option_owners(option: str) -> list[SamplerSpec]:
    """The registered samplers that read ``option``."""
    return [spec for spec in SAMPLERS.values() if option in spec.options]


def _own_options(name: str, options: Mapping | None) -> dict:
    """The sampler's settings: its defaults, updated by ``options``; ValueError for a key
    it does not read or a value outside its option's interval."""
    spec = SAMPLERS[name]
    defaults = spec.defaults()
    unknown = sorted(set(options or {}) - set(defaults))
    if unknown:
        raise UserError(f"sampler {name!r} has no option {', '.join(map(repr, unknown))}; "
                        f"its options: {', '.join(defaults) or 'none'}")
    settings = {**defaults, **(options or {})}
    for key, value in settings.items():
        if not spec.options[key].admits(value):
            raise UserError(f"{key} must lie in {spec.options[key].interval()}, got {value}")
    return settings
