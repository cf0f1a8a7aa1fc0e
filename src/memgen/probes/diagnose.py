"""How far a model's denoiser is from the exact denoiser of its training set, by noise level.

At each VE noise level σ (x = y + σ n, see ``memgen.diffusion.denoisers``) draw n queries: y
uniformly from the training set S (a seeded ``torch.Generator``), n ~ N(0, I), and call
the model D_θ and the exact empirical denoiser D*_S (``EmpiricalDenoiser``) at the same
(x, σ). Per query i and pair (u, v) of {D_θ(x), D*_S(x), y}, the mean squared error per
coordinate is e_i = ‖u_i − v_i‖²/D; per level

    RMS = √(ē),   ē = (1/n) Σ_i e_i,   95% interval √(max(0, ē ∓ 1.96 se)),
    se = std(e_i)/√n   (normal approximation for the mean of e; NaN for n = 1).

Three pairs: model vs exact (``rms``: is the network the optimal model of S?), model vs
clean y, and exact vs clean y (the error of the optimal model itself, for scale: it is
≈ 0 at small σ, where D*_S returns the nearest training point, and the spread of S
around its mean at large σ, where D*_S returns the mean).

Known answer (tests): for y ~ N(μ, s² I) and two linear shrinkers D_a = μ + a(x − μ),
D_b = μ + b(x − μ), D_a − D_b = (a − b)(x − μ) with x − μ ~ N(0, (s² + σ²) I), so
RMS = |a − b| √(s² + σ²); the posterior mean D* has b = s²/(s² + σ²).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from memgen.errors import UserError

Z95 = 1.959963984540054  # two-sided 95% normal quantile
PAIRS = ("vs_exact", "model_vs_clean", "exact_vs_clean")  # rows of the per-query errors


@dataclass(frozen=True)
class DenoiserError:
    """Per noise level (all arrays (L,), float64): RMS per coordinate and 95% intervals.

    rms: model vs exact denoiser; rms_model_vs_clean / rms_exact_vs_clean: each denoiser
    vs the clean training sample y the query was made from.
    """

    sigma: np.ndarray
    rms: np.ndarray
    rms_lo: np.ndarray
    rms_hi: np.ndarray
    rms_model_vs_clean: np.ndarray
    rms_model_vs_clean_lo: np.ndarray
    rms_model_vs_clean_hi: np.ndarray
    rms_exact_vs_clean: np.ndarray
    rms_exact_vs_clean_lo: np.ndarray
    rms_exact_vs_clean_hi: np.ndarray
    n_per_level: int

    def as_rows(self) -> list[dict]:
        """One dict per level with the keys of ``COLUMNS`` (plain floats / ints)."""
        names = {"rms_vs_exact": "rms", "rms_vs_exact_lo": "rms_lo",
                 "rms_vs_exact_hi": "rms_hi"}
        rows = []
        for i in range(len(self.sigma)):
            row = {c: float(getattr(self, names.get(c, c))[i]) for c in COLUMNS[:-1]}
            rows.append({**row, "n": self.n_per_level})
        return rows


COLUMNS = ("sigma", "rms_vs_exact", "rms_vs_exact_lo", "rms_vs_exact_hi",
           "rms_model_vs_clean", "rms_model_vs_clean_lo", "rms_model_vs_clean_hi",
           "rms_exact_vs_clean", "rms_exact_vs_clean_lo", "rms_exact_vs_clean_hi", "n")


@dataclass(frozen=True)
class DiagnoseConfig:
    """Settings of ``memgen diagnose`` (stored in diagnose.json).

    sigmas: the VE levels, or None for ``levels`` log-spaced over the model's schedule.
    """

    sigmas: tuple[float, ...] | None = None
    levels: int = 12
    n_per_level: int = 256
    batch_size: int = 256
    seed: int = 0

    def __post_init__(self):
        if self.sigmas is not None:
            check_sigmas(self.sigmas)
        for name, least in (("levels", 2), ("n_per_level", 1), ("batch_size", 1)):
            value = getattr(self, name)
            if int(value) != value or value < least:
                raise UserError(f"{name} must be an integer >= {least}, got {value}")


def default_sigmas(schedule, levels: int = 12) -> np.ndarray:
    """``levels`` log-spaced σ from the schedule's smallest to its largest positive VE σ.

    VPSchedule: σ_t = √((1 − ᾱ_t)/ᾱ_t), t = 0..T−1 (≈ 0.01 … 157 for the linear DDPM
    schedule); VESchedule: σ(t_min) … sigma_max. (levels,) float64, increasing.
    """
    if int(levels) != levels or levels < 2:
        raise UserError(f"levels must be an integer >= 2, got {levels}")
    ladder = schedule.sigmas().double()
    ladder = ladder[ladder > 0]
    lo, hi = float(ladder.min()), float(ladder.max())
    return np.clip(np.geomspace(lo, hi, int(levels)), lo, hi)


def check_sigmas(sigmas) -> np.ndarray:
    """σ as a (L,) float64 array; ValueError unless non-empty, finite and > 0."""
    s = np.asarray(sigmas, dtype=np.float64).reshape(-1)
    if s.size == 0:
        raise UserError("give at least one noise level sigma")
    if not (np.isfinite(s).all() and (s > 0).all()):
        raise UserError(f"noise levels sigma must be finite and > 0, got {s.tolist()}")
    return s


def denoiser_error(model, exact, data: torch.Tensor, sigmas, *, n_per_level: int = 256,
                   generator: torch.Generator, batch_size: int = 256,
                   progress: bool = False) -> DenoiserError:
    """RMS per coordinate of D_model − D_exact, D_model − y and D_exact − y per level.

    model, exact: denoisers D(x, σ); data: the training set (N, ...) whose samples y are
    the clean points (its dtype and device are the queries'); sigmas: (L,) VE levels;
    generator: a CPU ``torch.Generator`` (draws the indices, then the noise, batch by
    batch: same seed and batch size, same numbers). Memory: one batch at a time.
    """
    sigmas = check_sigmas(sigmas)
    if int(n_per_level) != n_per_level or n_per_level < 1:
        raise UserError(f"n_per_level must be an integer >= 1, got {n_per_level}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise UserError(f"batch_size must be an integer >= 1, got {batch_size}")
    if data.ndim < 2 or len(data) == 0:
        raise UserError("data must be a non-empty (N, ...) tensor")
    errors = [_level_errors(model, exact, data, float(s), int(n_per_level), generator,
                            int(batch_size))
              for s in tqdm(sigmas, desc="noise levels", unit="level", disable=not progress)]
    return _summarise(sigmas, torch.stack(errors).numpy(), int(n_per_level))


@torch.no_grad()
def _level_errors(model, exact, data, sigma: float, n: int, generator, batch_size: int):
    """(3, n) float64 per-query mean squared errors per coordinate, in ``PAIRS`` order."""
    out = []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        idx = torch.randint(len(data), (b,), generator=generator)
        y = data[idx.to(data.device)]  # (b, ...)
        noise = torch.randn(y.shape, generator=generator, dtype=y.dtype).to(data.device)
        x = y + sigma * noise
        d_model, d_exact, clean = model(x, sigma).double(), exact(x, sigma).double(), y.double()
        out.append(torch.stack([_mean_square(d_model - d_exact), _mean_square(d_model - clean),
                                _mean_square(d_exact - clean)]))
    return torch.cat(out, dim=1).cpu()


def _mean_square(diff: torch.Tensor) -> torch.Tensor:
    """‖diff_i‖²/D per row: (B, ...) -> (B,)."""
    return diff.reshape(len(diff), -1).square().mean(dim=1)


def _summarise(sigmas: np.ndarray, errors: np.ndarray, n: int) -> DenoiserError:
    """errors: (L, 3, n) per-query e_i -> RMS and 95% intervals per level and pair."""
    mean = errors.mean(axis=2)  # (L, 3)
    se = errors.std(axis=2, ddof=1) / math.sqrt(n) if n > 1 else np.full_like(mean, np.nan)
    lo, hi = np.sqrt(np.maximum(mean - Z95 * se, 0.0)), np.sqrt(mean + Z95 * se)  # NaN stays
    fields = {}
    for j, pair in enumerate(PAIRS):
        name = "rms" if pair == "vs_exact" else f"rms_{pair}"
        fields.update({name: np.sqrt(mean[:, j]), f"{name}_lo": lo[:, j], f"{name}_hi": hi[:, j]})
    return DenoiserError(sigma=sigmas, n_per_level=n, **fields)


__all__ = ["COLUMNS", "DenoiserError", "DiagnoseConfig", "check_sigmas", "default_sigmas",
           "denoiser_error"]
