"""Recovery from noise and the critical noise level σ* (basin size) of a model's dynamics.

A sample x0 is noised to x0 + σ n and carried back to σ = 0 by a sampler of the denoiser
D(x, σ) in variance-exploding (VE) coordinates (``memgen.diffusion.denoisers``); it is
recovered when it lands within δ of x0.

Symbols → names (B samples, G noise levels, n trials, D = numel of one sample):
    P(σ)   share of n noisings x0 + σ n_j carried back to x0     ``Recovery.probability``
    σ*     the largest σ with P(σ) ≥ p (critical level)           ``CriticalTime.sigma``
    t*     the schedule time of σ*                                 ``CriticalTime.t``
    r*     basin radius mean_j ‖x0 − x_σ*,j‖ = σ* mean_j ‖n_j‖ ≈ σ*√D   ``CriticalTime.radius``

Radii and σ are VE quantities; a VP model's x_t = √ᾱ x_ve is a rescaled copy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from memgen.diffusion.ladders import ve_sigmas
from memgen.diffusion.rng import StackedGenerator
from memgen.diffusion.samplers import sampler_spec
from memgen.errors import UserError
from memgen.probes.checks import F64, check_chunk, check_points, check_sigma

METRICS = ("rms", "l2")
_NOISE_TAG, _SAMPLER_TAG = 1, 2  # last entry of a trial's stream key (seed, id, trial, tag)


def _sample_ids(sample_ids, batch: int) -> list[int]:
    """The per-sample stream keys: 0..B−1 by default, else B non-negative integers."""
    if sample_ids is None:
        return list(range(batch))
    ids = [int(i) for i in torch.as_tensor(sample_ids).reshape(-1).tolist()]
    if len(ids) != batch or min(ids) < 0:
        raise UserError(f"sample_ids must hold {batch} non-negative integers")
    return ids


# --------------------------------------------------------------------- recovery P(σ)


@dataclass(frozen=True)
class RecoveryConfig:
    """How a noise level σ is tested (defaults: the paper's reference code, n = 10, p = 0.9).

    Trial j noises x_σ = x0 + σ n_j and carries it back to 0 with ``sampler`` on the
    ladder σ·u, u = ``ladder()`` (``steps`` geometric levels 1 → rel_min, then 0); it is
    recovered when dist(x̂, x0) ≤ delta, dist = ‖x̂ − x0‖/√D ("rms", per-coordinate, so δ
    means the same for every image size) or ‖x̂ − x0‖ ("l2"). σ passes when P̂(σ) ≥ p.
    The ladder is relative to σ so that samples at different σ share one sampler call
    (see ``_Rescaled``: the sampler's spec must be scale-invariant); its smallest level
    σ·rel_min must lie in a network's schedule.
    """

    n_trials: int = 10
    p: float = 0.9
    delta: float = 0.1
    metric: str = "rms"
    sampler: str = "ddim"
    steps: int = 50
    rel_min: float = 1e-2
    seed: int = 0

    def __post_init__(self):
        if int(self.n_trials) != self.n_trials or self.n_trials < 1:
            raise UserError(f"n_trials must be an integer >= 1, got {self.n_trials}")
        if not 0 < self.p <= 1:
            raise UserError(f"p must lie in (0, 1], got {self.p}")
        if not (math.isfinite(self.delta) and self.delta > 0):
            raise UserError(f"delta must be a finite positive distance, got {self.delta}")
        if self.metric not in METRICS:
            raise UserError(f"unknown metric {self.metric!r}; known: {', '.join(METRICS)}")
        if not sampler_spec(self.sampler).scale_invariant:  # UserError for an unknown one
            raise UserError(f"sampler {self.sampler!r} is not scale-invariant: recovery runs "
                            "every sample on its own ladder σ·u in one call")
        if int(self.steps) != self.steps or self.steps < 1:
            raise UserError(f"steps must be an integer >= 1, got {self.steps}")
        if not 0 < self.rel_min <= 1:
            raise UserError(f"rel_min must lie in (0, 1], got {self.rel_min}")
        if int(self.seed) != self.seed or self.seed < 0:
            raise UserError(f"seed must be a non-negative integer, got {self.seed}")

    def ladder(self) -> torch.Tensor:
        """Relative ladder u: (steps + 1,) float64, geometric from 1 to rel_min, then 0."""
        return torch.cat([ve_sigmas(1.0, self.rel_min, self.steps), torch.zeros(1, dtype=F64)])

    def needed(self) -> int:
        """Recovered trials needed to pass: ⌈p·n⌉ (guarded against rounding up p·n)."""
        return math.ceil(self.p * self.n_trials * (1 - 1e-12))


@dataclass(frozen=True)
class Recovery:
    """Outcome of noising + denoising x0 at every level (B samples, G levels, n trials)."""

    sigma: torch.Tensor  # (B, G) float64, the levels tested
    distance: torch.Tensor  # (B, G, n) float64, dist(x̂, x0) in the config's metric
    recovered: torch.Tensor  # (B, G, n) bool, distance ≤ δ
    probability: torch.Tensor  # (B, G) float64, P̂(σ) = share of trials recovered


def trial_noise(x0: torch.Tensor, n_trials: int, seed: int = 0, sample_ids=None) -> torch.Tensor:
    """Noise directions n_j of every sample's trials: (B, n_trials, ...) in x0's dtype.

    Row (b, j) is the first draw of the ``StackedGenerator`` stream keyed (seed,
    sample_ids[b], j, 1), so a sample's trials never depend on its batch, and the same
    n_j is used at every σ (common random numbers: P̂ varies smoothly with σ, and is
    non-increasing when each ray x0 + σ n_j leaves the basin once, as in 1-D).
    """
    x0 = check_points(x0, "x0")
    if int(n_trials) != n_trials or n_trials < 1:
        raise UserError(f"n_trials must be an integer >= 1, got {n_trials}")
    ids = _sample_ids(sample_ids, len(x0))
    keys = [(seed, i, j, _NOISE_TAG) for i in ids for j in range(int(n_trials))]
    size = x0[0].numel()
    # The streams' first ``size`` normals, i.e. StackedGenerator(keys).randn(...) without its
    # 4,096-per-stream read-ahead (the same numbers: numpy's normals come one after another).
    draws = np.stack([g.standard_normal(size) for g in StackedGenerator(keys).generators])
    out = torch.from_numpy(draws).to(dtype=x0.dtype, device=x0.device)
    return out.view(len(x0), n_trials, *x0.shape[1:])


def recovery_probability(denoiser, x0: torch.Tensor, sigmas,
                         config: RecoveryConfig = RecoveryConfig(), *, sample_ids=None,
                         chunk: int | None = None) -> Recovery:
    """P̂(σ) for every sample and level: sigmas (G,) shared or (B, G) per sample.

    x0: (B, ...) in the denoiser's data shape. All B·G·n trials run through one sampler
    call (``chunk`` rows at a time if given; chunking never changes the result).
    """
    x0 = check_points(x0, "x0")
    check_chunk(chunk)
    ids = _sample_ids(sample_ids, len(x0))
    levels = torch.as_tensor(sigmas, dtype=F64).cpu()
    levels = levels.expand(len(x0), -1) if levels.ndim == 1 else levels
    if levels.ndim != 2 or len(levels) != len(x0) or levels.shape[1] == 0:
        raise UserError(f"sigmas must be (G,) or ({len(x0)}, G), got {tuple(levels.shape)}")
    if not (torch.isfinite(levels).all() and (levels > 0).all()):
        raise UserError("sigmas must be finite and positive")
    noise = trial_noise(x0, config.n_trials, config.seed, ids)
    return _recover(denoiser, x0, noise, levels, ids, config, chunk)


def _recover(denoiser, x0, noise, levels, ids, config, chunk) -> Recovery:
    """Trials laid out as rows (b, g, j): start x0_b + σ_bg n_bj, carried back to 0."""
    (b, g), n, shape = levels.shape, config.n_trials, x0.shape[1:]
    ones = [1] * len(shape)
    scale = levels[:, :, None].expand(b, g, n).reshape(-1)  # (R,) float64, R = B·G·n
    start = x0[:, None, None] + scale.view(b, g, n, *ones).to(x0) * noise[:, None]
    keys = [(config.seed, i, j, _SAMPLER_TAG) for i in ids for _ in range(g) for j in range(n)]
    x_hat = _denoise_back(denoiser, start.reshape(-1, *shape), scale, keys, config, chunk)
    diff = (x_hat.reshape(b, g, n, -1) - x0.reshape(b, 1, 1, -1)).double()
    dist = diff.norm(dim=-1) / (math.sqrt(diff.shape[-1]) if config.metric == "rms" else 1.0)
    recovered = dist <= config.delta
    return Recovery(levels.clone(), dist.cpu(), recovered.cpu(),
                    recovered.double().mean(-1).cpu())


def _denoise_back(denoiser, start, scale, keys, config, chunk) -> torch.Tensor:
    """Row r carried from level scale[r] to 0: the sampler on the shared relative ladder u
    with the rescaled denoiser D̃(x, u) = D(x, c u) and noise c z (exact, see ``_Rescaled``):
    the per-row streams keyed ``keys`` with scale c, none for a deterministic sampler."""
    spec, u = sampler_spec(config.sampler), config.ladder()
    sampler, step, out = spec.run, chunk or len(start), []
    for i in range(0, len(start), step):
        c = scale[i:i + step]
        gen = (None if spec.deterministic
               else StackedGenerator(keys[i:i + step], start.device, scale=c))
        out.append(sampler(_Rescaled(denoiser, c), start[i:i + step], u, generator=gen))
    return torch.cat(out)


class _Rescaled:
    """D̃(x, u) = D(x, c u), row r at its own level c_r u.

    A scale-invariant sampler's step s → s' (``SamplerSpec.scale_invariant``, every one
    registered today) is invariant under s = c u, s' = c u' once its noise is multiplied by
    c: the drift terms depend on x, D and the ratios s'/s, (s² − s'²)/s² only (DDIM/Euler
    x' = x̂ + (s'/s)(x − x̂); Heun; Euler–Maruyama's (s² − s'²)·(x̂ − x)/s²), and every noise
    term is s or √(s² − s'²) times z, i.e. c times the same term in u. So one call on the
    ladder u runs each row on its own ladder c_r u.
    """

    def __init__(self, denoiser, scale: torch.Tensor):
        self.denoiser, self.scale = denoiser, scale

    def __call__(self, x: torch.Tensor, u) -> torch.Tensor:
        sigma = self.scale.to(x.device) * torch.as_tensor(u, dtype=F64, device=x.device)
        return self.denoiser(x, sigma.to(x.dtype))


# --------------------------------------------------------------------- critical time


@dataclass(frozen=True)
class CriticalTime:
    """Critical level per sample, bracketed: sigma ≤ σ* ≤ sigma_upper. All (B,) float64.

    censored: 0 bracketed in [σ_lo, σ_hi]; +1 P̂(σ_hi) ≥ p (sigma = σ_hi, sigma_upper = inf);
    −1 P̂(σ_lo) < p (sigma = 0, sigma_upper = σ_lo). radius and log_volume are taken at
    sigma; t is the schedule's time of sigma (None without a schedule, NaN where sigma = 0).
    """

    sigma: torch.Tensor
    sigma_upper: torch.Tensor
    t: torch.Tensor | None
    radius: torch.Tensor  # mean_j ‖x0 − x_σ,j‖ = σ mean_j ‖n_j‖
    log_volume: torch.Tensor  # log volume of the D-ball of that radius
    censored: torch.Tensor  # (B,) int8
    rounds: int  # bisection rounds run (0 when no sample was bracketed)


def ball_log_volume(radius: torch.Tensor, dim: int) -> torch.Tensor:
    """log V_D(r) = (D/2) log π − lgamma(D/2 + 1) + D log r (−inf at r = 0)."""
    if int(dim) != dim or dim < 1:
        raise UserError(f"dim must be a positive integer, got {dim}")
    radius = torch.as_tensor(radius, dtype=F64)
    const = 0.5 * dim * math.log(math.pi) - math.lgamma(0.5 * dim + 1)
    return const + dim * radius.log()


def bisection_rounds(sigma_lo: float, sigma_hi: float, rtol: float) -> int:
    """Halvings of log(σ_hi/σ_lo) until the bracket's ratio is ≤ 1 + rtol."""
    ratio = math.log(sigma_hi / sigma_lo) / math.log1p(rtol)
    return max(0, math.ceil(math.log2(ratio))) if ratio > 1 else 0


def critical_time(denoiser, x0: torch.Tensor, sigma_lo: float, sigma_hi: float,
                  config: RecoveryConfig = RecoveryConfig(), *, rtol: float = 1e-2,
                  schedule=None, sample_ids=None, chunk: int | None = None) -> CriticalTime:
    """σ* = max{σ : P̂(σ) ≥ p} per sample, by bisection in log σ inside [σ_lo, σ_hi].

    Both ends are tested first (one call); then each round tests the midpoint √(lo·hi) of
    every still-bracketed sample in one batched call, keeping lo with P̂(lo) ≥ p and hi
    with P̂(hi) < p, until hi/lo ≤ 1 + rtol. If P̂ is not monotone the result is one
    crossing of p inside the bracket. ``schedule`` (VP or VE) adds t* = t(σ*) and checks
    that the levels probed, σ_lo·rel_min … σ_hi, lie in its range.
    """
    sigma_lo, sigma_hi = check_sigma(sigma_lo), check_sigma(sigma_hi)
    if not sigma_lo < sigma_hi or not (math.isfinite(rtol) and rtol > 0):
        raise UserError(f"need 0 < sigma_lo < sigma_hi and rtol > 0, got "
                         f"{sigma_lo}, {sigma_hi}, {rtol}")
    if schedule is not None:
        _check_schedule(schedule, sigma_lo * config.rel_min, sigma_hi)
    x0 = check_points(x0, "x0")
    check_chunk(chunk)
    ids = _sample_ids(sample_ids, len(x0))
    noise = trial_noise(x0, config.n_trials, config.seed, ids)
    passes = partial(_passes, denoiser, x0, noise, ids, config, chunk)
    everyone = torch.arange(len(x0))
    ends = passes(everyone, torch.tensor([[sigma_lo, sigma_hi]], dtype=F64).expand(len(x0), 2))
    lo = torch.full((len(x0),), sigma_lo, dtype=F64)
    hi = torch.full((len(x0),), sigma_hi, dtype=F64)
    active = ends[:, 0] & ~ends[:, 1]
    rounds = 0
    while rounds < bisection_rounds(sigma_lo, sigma_hi, rtol) and active.any():
        idx, rounds = everyone[active], rounds + 1
        mid = (lo[idx] * hi[idx]).sqrt()
        ok = passes(idx, mid[:, None])[:, 0]
        lo[idx], hi[idx] = torch.where(ok, mid, lo[idx]), torch.where(ok, hi[idx], mid)
    return _critical_result(lo, hi, ends, rounds, noise, schedule)


def _passes(denoiser, x0, noise, ids, config, chunk, idx, levels) -> torch.Tensor:
    """Whether P̂(σ) ≥ p for the samples idx at levels (len(idx), G): (len(idx), G) bool."""
    rec = _recover(denoiser, x0[idx], noise[idx], levels, [ids[i] for i in idx.tolist()],
                   config, chunk)
    return rec.recovered.sum(-1) >= config.needed()


def _critical_result(lo, hi, ends, rounds, noise, schedule) -> CriticalTime:
    above, below = ends[:, 1], ~ends[:, 0] & ~ends[:, 1]
    sigma = torch.where(above, hi, torch.where(below, torch.zeros_like(lo), lo))
    upper = torch.where(above, torch.full_like(hi, math.inf), torch.where(below, lo, hi))
    b, dim = len(noise), noise[0, 0].numel()
    radius = sigma * noise.reshape(b, noise.shape[1], -1).double().cpu().norm(dim=-1).mean(-1)
    t = None if schedule is None else _schedule_time(schedule, sigma)
    return CriticalTime(sigma, upper, t, radius, ball_log_volume(radius, dim),
                        above.to(torch.int8) - below.to(torch.int8), rounds)


def _check_schedule(schedule, smallest: float, largest: float) -> None:
    try:
        schedule.t_from_sigma(torch.tensor([smallest, largest], dtype=F64))
    except ValueError as err:
        raise UserError(f"the levels probed, {smallest:.4g} (sigma_lo * rel_min) to "
                         f"{largest:.4g} (sigma_hi), fall outside the schedule: {err}") from None


def _schedule_time(schedule, sigma: torch.Tensor) -> torch.Tensor:
    t = torch.full_like(sigma, math.nan)
    positive = sigma > 0
    if positive.any():
        t[positive] = torch.as_tensor(schedule.t_from_sigma(sigma[positive]), dtype=F64)
    return t


__all__ = ["RecoveryConfig", "Recovery", "CriticalTime", "trial_noise", "recovery_probability",
           "critical_time", "bisection_rounds", "ball_log_volume"]
