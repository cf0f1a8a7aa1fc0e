"""Generating evaluation and synthetic sets as resumable npz shards.

Sample i of a set is drawn from its own random stream, seeded by (seed, i), so it does
not depend on the batch it was drawn in nor on how the work was split; finished shards
are skipped when a run is repeated, and a merged ``NAME.npz`` (key ``samples``, the
layout ``memgen classify`` reads) is written once all shards exist.

Modelling choices, explicit and defaulting to what memgen always did:
    prior          where x starts at the ladder's top σ₀: "standard" N(0, σ₀² I) for VE and
                   DDPM's x_T ~ N(0, I) for VP (N(0, (1 + σ₀²) I) in VE coordinates); or
                   "forward", the forward process's own law N(μ, σ₀² I + Σ) with the training
                   set's mean and covariance (``samplers.forward_prior``). The standard VE start
                   ignores the data's spread: on the unit circle (Σ = I/2) with σ₀ = 1 it has
                   std 1 where the forward process has √1.5, and the PF-ODE then ends with
                   covariance σ₀² Σ(Σ + σ₀² I)⁻¹ (1/3 per axis) instead of Σ (1/2). For VP,
                   σ₀ ≈ 157 and the two differ by O(Σ/σ₀²), O(μ/σ₀).
    clip_denoised  clamp x̂₀ = D(x, σ) to clip_range at every step (Ho et al.'s clip_denoised;
                   DDIM and Heun then integrate the clipped field, not the model's ODE).
                   None: on for ε-prediction networks (``EpsDenoiser``: DDPM's own sampler, and
                   memgen's behaviour before the option), off for every other denoiser.
"""

from __future__ import annotations

import json
import math
import zipfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from memgen.diffusion.denoisers import EpsDenoiser
from memgen.diffusion.samplers import (GaussianPrior, StackedGenerator, clipped, forward_prior,
                                       get_sampler, retrieve_fixed_point, sampler_options,
                                       truncate_ladder)
from memgen.diffusion.schedules import VESchedule, VPSchedule
from memgen.errors import UserError
from memgen.io import atomic_file

PRIORS = ("standard", "forward")


@dataclass(frozen=True)
class GenerateConfig:
    n: int
    sampler: str = "ddpm"
    steps: int | None = None  # None: the schedule's full ladder (T for VP, 1000 for VE)
    eta: float = 0.0  # DDIM only
    seed: int = 0
    batch_size: int = 256
    shard_size: int = 1000
    name: str = "samples"
    clip: bool = True  # clip the final samples to [−1, 1] (images)
    final_denoise: bool = False  # end the ladder with σ = 0 (one last denoising step)
    # stop the ladder at this VE noise level and retrieve x ← D(x, σ) to a fixed point: with
    # the exact denoiser, the attractors of E_σ (mixture minima: a known spurious generator)
    stop_sigma: float | None = None
    prior: str = "standard"  # "standard" | "forward" (see the module docstring)
    clip_denoised: bool | None = None  # None: on for ε-networks (EpsDenoiser), else off
    clip_range: tuple[float, float] = (-1.0, 1.0)  # [lo, hi] for clip_denoised

    def __post_init__(self):
        if self.n < 1 or self.batch_size < 1 or self.shard_size < 1:
            raise UserError("n, batch_size and shard_size must be at least 1")
        if self.stop_sigma is not None and (self.final_denoise or not self.stop_sigma > 0):
            raise UserError("stop_sigma must be positive and excludes final_denoise")
        get_sampler(self.sampler)  # ValueError for unknown samplers
        if self.prior not in PRIORS:
            raise UserError(f"unknown prior {self.prior!r}; known: {', '.join(PRIORS)}")
        if len(self.clip_range) != 2 or not self.clip_range[0] < self.clip_range[1]:
            raise UserError(f"clip_range must be a pair lo < hi, got {self.clip_range}")
        if not self.name or "/" in self.name:
            raise UserError(f"bad set name {self.name!r}")


def sample_seed(seed: int, index: int) -> tuple[int, int]:
    """The seed of sample ``index`` of a set generated with ``seed``: the pair itself, a
    distinct 128-bit key of its own stream for every (set, sample)."""
    return (seed, index)


def ladder(schedule, steps: int | None) -> torch.Tensor:
    """The decreasing σ ladder a sampler follows, from the schedule."""
    if isinstance(schedule, VESchedule):
        return schedule.sigmas(1000 if steps is None else steps)
    return schedule.sigmas(steps)


def initial_std(schedule, sigma0: float) -> float:
    """Std of the starting noise in VE coordinates: VP x_T ~ N(0, I) is N(0, (1 + σ_T²) I)."""
    return math.sqrt(1 + sigma0**2) if isinstance(schedule, VPSchedule) else sigma0


def start_prior(schedule, sigma0: float, prior: str = "standard", data=None) -> GaussianPrior:
    """The law of the starting point at the ladder's top σ₀ (VE coordinates, both schedules).

    data: the training set (K, ...) whose mean and covariance the "forward" prior uses."""
    if prior == "standard":
        return GaussianPrior(initial_std(schedule, sigma0))
    if prior != "forward":
        raise UserError(f"unknown prior {prior!r}; known: {', '.join(PRIORS)}")
    if data is None:
        raise UserError("prior 'forward' needs the training set (data=...)")
    return forward_prior(torch.as_tensor(data), sigma0)


def denoised_clip(denoiser, config: GenerateConfig) -> tuple[float, float] | None:
    """The (lo, hi) every x̂₀ is clamped to, or None: config.clip_denoised, where None means
    on for ε-prediction networks only."""
    on = config.clip_denoised
    if on is None:
        on = isinstance(denoiser, EpsDenoiser)
    return tuple(config.clip_range) if on else None


def generate(denoiser, shape: tuple[int, ...], schedule, config: GenerateConfig, out: Path,
             *, data=None, device="cpu", dtype=torch.float32, progress: bool = True) -> Path:
    """Write shards NAME-00000.npz … and the merged NAME.npz into ``out``; return the latter.

    data: the training set (K, *shape), needed only for config.prior = "forward"."""
    if config.prior == "forward" and data is None:
        raise UserError("prior 'forward' needs the training set (data=...)")
    if data is not None and tuple(data.shape[1:]) != tuple(shape):
        raise UserError(f"data samples have shape {tuple(data.shape[1:])}, not {tuple(shape)}")
    out.mkdir(parents=True, exist_ok=True)
    sigmas = ladder(schedule, config.steps)
    if config.final_denoise and float(sigmas[-1]) > 0:
        sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    if config.stop_sigma is not None:
        sigmas = truncate_ladder(sigmas, config.stop_sigma)
    start = None  # built when a shard is drawn: the forward prior costs a covariance
    clip = denoised_clip(denoiser, config)
    n_shards = math.ceil(config.n / config.shard_size)
    bar = tqdm(total=config.n, desc=f"generate {config.name}", unit="sample",
               disable=not progress)
    for shard in range(n_shards):
        lo, hi = shard * config.shard_size, min(config.n, (shard + 1) * config.shard_size)
        path = out / f"{config.name}-{shard:05d}.npz"
        if not _complete(path, hi - lo):
            start = start or start_prior(schedule, float(sigmas[0]), config.prior, data)
            samples = _draw(denoiser, shape, sigmas, start, clip, config, lo, hi, device, dtype)
            _save_npz(path, samples)
        bar.update(hi - lo)
    bar.close()
    merged = out / f"{config.name}.npz"
    parts = [np.load(out / f"{config.name}-{s:05d}.npz", allow_pickle=False)["samples"]
             for s in range(n_shards)]
    _save_npz(merged, np.concatenate(parts))
    record = {"config": asdict(config), "denoised_clip": clip}
    (out / f"{config.name}.json").write_text(json.dumps(record, indent=2))
    return merged


def _draw(denoiser, shape, sigmas, start, clip, config, lo, hi, device, dtype) -> np.ndarray:
    sampler = get_sampler(config.sampler)
    options = sampler_options(config.sampler, {"eta": config.eta})
    chunks = []
    for b0 in range(lo, hi, config.batch_size):
        b1 = min(hi, b0 + config.batch_size)
        generator = StackedGenerator([sample_seed(config.seed, i) for i in range(b0, b1)])
        x = start.sample((b1 - b0, *shape), generator, device=device, dtype=dtype)
        x = sampler(denoiser, x, sigmas.to(device), clip=clip, generator=generator,
                    options=options)
        if config.stop_sigma is not None:
            x = retrieve_fixed_point(clipped(denoiser, clip), x, config.stop_sigma)
        chunks.append((x.clamp(-1, 1) if config.clip else x).float().cpu().numpy())
    return np.concatenate(chunks)


def _complete(path: Path, n: int) -> bool:
    """Whether a shard exists and holds n samples (a torn write is redone)."""
    if not path.exists():
        return False
    try:
        with np.load(path, allow_pickle=False) as archive:
            return len(archive["samples"]) == n
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):
        return False


def _save_npz(path: Path, samples: np.ndarray) -> None:
    with atomic_file(path) as tmp:
        np.savez(tmp, samples=samples)
