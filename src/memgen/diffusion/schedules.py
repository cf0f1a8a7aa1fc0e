"""Noise schedules: DDPM's variance-preserving linear β schedule and the toy VE schedule.

Samplers work in variance-exploding (VE) coordinates x = y + σ n (see
``memgen.diffusion.denoisers``); a schedule's job is to say which σ ladder to walk down.
Symbols → names:

    paper (Ho et al. 2020)              here
    β_t   (t = 1..T)                    ``betas[t]``            (t = 0..T−1, 0-based)
    α_t = 1 − β_t                       ``1 - betas``
    ᾱ_t = Π_{s≤t} α_s                   ``alphas_cumprod[t]``
    √ᾱ_t  (signal scale a_t)            ``scale(t)``
    √(1 − ᾱ_t)  (VP noise std)          ``sigma_vp(t)``
    σ_t = √((1 − ᾱ_t)/ᾱ_t)  (VE std)    ``sigma(t)``;  x_ve = x_vp / a_t
    β̃_t = β_t (1 − ᾱ_{t−1})/(1 − ᾱ_t)  posterior variance, see ``samplers.sample_ddpm``

Timestep convention: t is 0-based. t = 0 is the least noisy level (the paper's t = 1,
β_1 = beta_min) and t = T − 1 the noisiest (the paper's t = T). ᾱ_{−1} := 1 (σ = 0), the
clean data, is the final 0 of a DDPM ladder.

Note: the public reference code (Lemon-cmd/Diffusion-Models-and-Associative-Memory)
uses cumprod(β_t) in its relative-energy code; ᾱ_t is cumprod(1 − β_t), as here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import torch

from memgen.errors import UserError

F64 = torch.float64
_RTOL = 1e-6  # σ this far outside a schedule's range (float32 rounding) is clamped into it


def _as_f64(value) -> tuple[torch.Tensor, bool]:
    """(float64 tensor, whether the input was a plain Python number)."""
    scalar = not isinstance(value, torch.Tensor)
    return torch.as_tensor(value, dtype=F64), scalar


def _out(value: torch.Tensor, scalar: bool):
    return value.item() if scalar else value


def alpha_bar_from_sigma(sigma):
    """ᾱ = 1/(1 + σ²) for a VE noise level σ (float in → float out, tensor → tensor)."""
    s, scalar = _as_f64(sigma)
    if (s < 0).any():
        raise UserError("sigma must be >= 0")
    return _out(1.0 / (1.0 + s.square()), scalar)


def sigma_from_alpha_bar(alpha_bar):
    """σ = √((1 − ᾱ)/ᾱ), the VE noise level of a VP level ᾱ ∈ (0, 1]."""
    ab, scalar = _as_f64(alpha_bar)
    if ((ab <= 0) | (ab > 1)).any():
        raise UserError("alpha_bar must lie in (0, 1]")
    return _out(((1.0 - ab) / ab).sqrt(), scalar)


@dataclass(frozen=True)
class VPSchedule:
    """DDPM linear schedule: β_t = linspace(beta_min, beta_max, T) (Ho et al. 2020, §4).

    Methods taking t accept a float or a tensor of floats in [0, T − 1]; integer t reads
    the table, fractional t interpolates log σ linearly (so ``t_from_sigma`` inverts
    ``sigma`` exactly). A float in gives a float out, a tensor a float64 tensor.
    """

    beta_min: float = 1e-4
    beta_max: float = 0.02
    T: int = 1000
    default_sampler: ClassVar[str] = "ddpm"  # Ho et al.'s ancestral sampler (not a field)
    deterministic_sampler: ClassVar[str] = "ddim"  # at η = 0: the census's default

    def __post_init__(self):
        if not 0 < self.beta_min <= self.beta_max < 1:
            raise UserError("need 0 < beta_min <= beta_max < 1, "
                             f"got beta_min={self.beta_min}, beta_max={self.beta_max}")
        if int(self.T) != self.T or self.T < 2:
            raise UserError(f"T must be an integer >= 2, got {self.T}")

    @property
    def betas(self) -> torch.Tensor:
        """β_t, t = 0..T−1: (T,) float64."""
        return torch.linspace(self.beta_min, self.beta_max, self.T, dtype=F64)

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """ᾱ_t = Π_{s≤t} (1 − β_s): (T,) float64, decreasing."""
        return torch.cumprod(1.0 - self.betas, 0)

    @cached_property
    def _sigma_table(self) -> torch.Tensor:
        ab = self.alphas_cumprod
        return ((1.0 - ab) / ab).sqrt()  # (T,) increasing; private, never handed out

    @cached_property
    def _log_sigma_table(self) -> torch.Tensor:
        return self._sigma_table.log()

    @cached_property
    def _tables_on(self) -> dict:
        return {}  # device → (σ table, log σ table) there, copied once

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device.type == "cpu":
            return self._sigma_table, self._log_sigma_table
        if device not in self._tables_on:
            self._tables_on[device] = (self._sigma_table.to(device),
                                       self._log_sigma_table.to(device))
        return self._tables_on[device]

    def sigma(self, t):
        """VE noise level σ_t = √((1 − ᾱ_t)/ᾱ_t)."""
        tt, scalar = _as_f64(t)
        if ((tt < 0) | (tt > self.T - 1)).any() or tt.isnan().any():
            raise UserError(f"t must lie in [0, {self.T - 1}]")
        table, log_table = self._sigma_table, self._log_sigma_table
        lo = tt.floor().clamp(max=self.T - 2).long()
        w = tt - lo
        interp = (log_table[lo] * (1 - w) + log_table[lo + 1] * w).exp()
        exact = torch.where(w == 0, table[lo], table[lo + 1])
        return _out(torch.where((w == 0) | (w == 1), exact, interp), scalar)

    def scale(self, t):
        """Signal scale a_t = √ᾱ_t (x_vp = a_t · x_ve)."""
        s, scalar = _as_f64(self.sigma(t))
        return _out(alpha_bar_from_sigma(s).sqrt(), scalar)

    def sigma_vp(self, t):
        """VP noise std √(1 − ᾱ_t) = σ_t · a_t."""
        s, scalar = _as_f64(self.sigma(t))
        return _out(s / (1.0 + s.square()).sqrt(), scalar)

    def check_sigma(self, sigma) -> None:
        """ValueError unless σ lies in [σ_0, σ_{T−1}], up to a relative 1e-6 (float32
        rounding of the ladder's ends). On CUDA the test waits for the device."""
        s, _ = _as_f64(sigma)
        table = self._tables(s.device)[0]
        if ((s < table[0] * (1 - _RTOL)) | (s > table[-1] * (1 + _RTOL))).any() or s.isnan().any():
            raise UserError(f"sigma must lie in [{table[0].item():.6g}, {table[-1].item():.6g}]"
                             " (the schedule's sigma(0) .. sigma(T-1))")

    def t_from_sigma(self, sigma, round: bool = False, *, check: bool = True):
        """Inverse of ``sigma``: continuous t by linear interpolation of log σ over
        t = 0..T−1, or with round=True the nearest integer index (int / int64 tensor).

        Computed on σ's device. σ up to a relative 1e-6 outside [σ_0, σ_{T−1}] is clamped
        to the range; farther out raises ValueError (``check_sigma``; check=False skips
        that test, for σ already checked, e.g. on the host)."""
        s, scalar = _as_f64(sigma)
        if check:
            self.check_sigma(s)
        table, log_table = self._tables(s.device)
        log_s = s.clamp(table[0], table[-1]).log()
        lo = (torch.searchsorted(log_table, log_s, right=True) - 1).clamp(0, self.T - 2)
        w = (log_s - log_table[lo]) / (log_table[lo + 1] - log_table[lo])
        t = lo + w
        if round:
            t = t.round().long()
        return _out(t, scalar)

    def timesteps(self, steps: int | None = None) -> torch.Tensor:
        """Decreasing integer timesteps: all T for steps=None, else ``steps`` evenly spaced
        from T−1 to 0 (both included; DDIM's uniform skip, diffusers' "linspace")."""
        if steps is None:
            steps = self.T
        if int(steps) != steps or not 1 <= steps <= self.T:
            raise UserError(f"steps must be an integer in [1, {self.T}], got {steps}")
        return torch.linspace(self.T - 1, 0, int(steps), dtype=F64).round().long()

    def sigmas(self, steps: int | None = None) -> torch.Tensor:
        """DDPM/DDIM sampling ladder: σ at ``timesteps(steps)`` followed by a final 0.

        (steps + 1,) float64, strictly decreasing; steps=None or T gives σ_{T−1} … σ_0, 0.
        """
        return torch.cat([self._sigma_table[self.timesteps(steps)], torch.zeros(1, dtype=F64)])


@dataclass(frozen=True)
class VESchedule:
    """VE SDE dx = sigma_max dW of the 2D toy: x_t = y + sigma_max √t n.

    σ(t) = sigma_max √t, so σ_i² − σ_{i+1}² = sigma_max² Δt and Euler–Maruyama on the σ
    ladder (``samplers.sample_euler_maruyama``) is Euler–Maruyama in t.
    """

    sigma_max: float = 1.0
    t_min: float = 1e-3
    default_sampler: ClassVar[str] = "euler_maruyama"  # the toy's sampler (not a field)
    deterministic_sampler: ClassVar[str] = "heun"  # the PF-ODE: the census's default

    def __post_init__(self):
        if not self.sigma_max > 0:
            raise UserError(f"sigma_max must be > 0, got {self.sigma_max}")
        if not 0 < self.t_min < 1:
            raise UserError(f"t_min must lie in (0, 1), got {self.t_min}")

    def sigma(self, t):
        """σ(t) = sigma_max √t for t ∈ [0, 1]."""
        tt, scalar = _as_f64(t)
        if ((tt < 0) | (tt > 1)).any() or tt.isnan().any():
            raise UserError("t must lie in [0, 1]")
        return _out(self.sigma_max * tt.sqrt(), scalar)

    def check_sigma(self, sigma) -> None:
        """ValueError unless σ lies in [0, sigma_max] (up to a relative 1e-6 above)."""
        s, _ = _as_f64(sigma)
        if ((s < 0) | (s > self.sigma_max * (1 + _RTOL))).any() or s.isnan().any():
            raise UserError(f"sigma must lie in [0, sigma_max={self.sigma_max}]")

    def t_from_sigma(self, sigma, *, check: bool = True):
        """t = (σ/sigma_max)², clamped to 1 for σ up to a relative 1e-6 above sigma_max;
        on σ's device (check=False: σ already checked, see ``check_sigma``)."""
        s, scalar = _as_f64(sigma)
        if check:
            self.check_sigma(s)
        return _out((s / self.sigma_max).square().clamp(max=1.0), scalar)

    def sigmas(self, steps: int = 1000) -> torch.Tensor:
        """Toy Euler–Maruyama ladder: σ(t) at ``steps`` points t = linspace(1, t_min).

        (steps,) float64, strictly decreasing, ending at σ(t_min) > 0 — no final 0: the
        toy sampler stops at t_min ("1000 steps from t=1 to 1e-3"), so its samples carry
        noise of std σ(t_min); append a 0 for a final denoising step.
        """
        if int(steps) != steps or steps < 2:
            raise UserError(f"steps must be an integer >= 2, got {steps}")
        t = torch.linspace(1.0, self.t_min, int(steps), dtype=F64)
        return self.sigma_max * t.sqrt()


__all__ = ["VPSchedule", "VESchedule", "alpha_bar_from_sigma", "sigma_from_alpha_bar"]
