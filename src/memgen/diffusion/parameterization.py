"""Parameterizations: what a network's output means, once per model family (the idea of
EDM's preconditioning and k-diffusion's wrappers), for both training and sampling.

A network F(x_net, t) of a family is trained with that family's ``loss`` and seen as a
denoiser D(x, σ) ≈ E[y | x = y + σ n] (VE coordinates, ``memgen.diffusion.denoisers``)
through its ``denoise``; both read one convention, so they cannot drift apart.
Symbols → names (x₀ a training sample, n ~ N(0, I)):

    EpsPrediction (vp_eps, DDPM: Ho et al. 2020), a ``VPSchedule``
        t ~ U{0..T−1}, x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) n,   loss ‖F(x_t, t) − n‖²  (F = ε̂)
        D(x, σ) = x − σ F(√ᾱ x, t(σ)),  ᾱ = 1/(1 + σ²)
    ScorePrediction (ve_score, the 2D toy: Song et al. 2021), a ``VESchedule``
        t ~ U(t_min, 1), σ = σ_max √t, x = x₀ + σ n,   loss ‖F(x, t) + n‖²  (F = σ·score)
        D(x, σ) = x + σ F(x, t(σ))  (Tweedie: D = x + σ² ∇log p_σ)

The loss is the mean over every coordinate of the batch; it is the λ(t) = σ² (VE) and
ε-matching (VP) weighting of denoising score matching. t is the network's own time input
(an integer index for VP, a float in [t_min, 1] for VE), drawn by ``draw_t``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from memgen.diffusion.schedules import VESchedule, VPSchedule
from memgen.errors import UserError


class EpsPrediction:
    """A VP ε-prediction network (k-diffusion's DiscreteEpsDDPMDenoiser), see the module
    docstring. t(σ) = schedule.t_from_sigma(σ), a float: exact integers on the ladder."""

    objective = "vp_eps"

    def __init__(self, schedule: VPSchedule):
        if not isinstance(schedule, VPSchedule):
            raise UserError(f"ε-prediction needs a VPSchedule, got {type(schedule).__name__}")
        self.schedule = schedule
        self._alpha_bar = {}  # device → ᾱ table (T,) float64 there, copied once

    def denoise(self, net, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """x̂₀ = x − σ ε̂ with ε̂ = net(√ᾱ x, t(σ)); x (B, ...), σ a number or (B,)."""
        sigma, t = network_time(self.schedule, sigma, x)
        a = (1 + sigma.square()).rsqrt().view(-1, *([1] * (x.ndim - 1)))  # √ᾱ, (B, 1, ...)
        eps = net(a * x, t)
        return x - sigma.view_as(a) * eps

    def at_levels(self, net, levels: Sequence[float], x: torch.Tensor) -> list[Callable]:
        """``denoise`` at each σ of ``levels``, as one callable y ↦ D(y, σ) each, for y like
        x: σ, t(σ) and √ᾱ computed for the whole ladder at once, to the same numbers."""
        sigma, t = ladder_time(self.schedule, levels, x)
        a = (1 + sigma.square()).rsqrt()  # √ᾱ, (L,)
        return [_eps_step(net, *c) for c in zip(_cols(sigma, x), _cols(a, x), _rows(t, x))]

    def residuals_at_levels(self, net, levels: Sequence[float], x: torch.Tensor
                            ) -> tuple[list[float], Callable]:
        """D(y, σ_i) − y = c_i·f(y, i) at the levels σ_i of ``levels``, as (c, f): c_i = −σ_i,
        f(y, i) = ε̂ at σ_i, for y like x; (f(y, i) * c_i).add_(y) is ``denoise``'s D to the
        bit. Numbers are Python floats (x's dtype's values): no per-level objects."""
        sigma, t = ladder_time(self.schedule, levels, x)
        a = (1 + sigma.square()).rsqrt().tolist()  # √ᾱ
        t = _time_rows(t, x)
        return (-sigma).tolist(), lambda y, i: net(a[i] * y, t[i])

    def loss(self, net, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Mean ‖net(x_t, t) − n‖² for integer t (B,) and noise n like x0 (B, ...)."""
        shape = (-1,) + (1,) * (x0.ndim - 1)
        a_bar = self.alphas_cumprod(x0.device)[t].to(x0.dtype)
        x_t = a_bar.sqrt().view(shape) * x0 + (1 - a_bar).sqrt().view(shape) * noise
        return (net(x_t, t) - noise).square().mean()

    def draw_t(self, batch: int, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
        """t ~ U{0..T−1}: (batch,) int64 on the CPU (dtype unused: an index)."""
        return torch.randint(self.schedule.T, (batch,), generator=generator)

    def alphas_cumprod(self, device: torch.device) -> torch.Tensor:
        """ᾱ_t (T,) float64 on ``device`` (copied there once)."""
        if device not in self._alpha_bar:
            self._alpha_bar[device] = self.schedule.alphas_cumprod.to(device)
        return self._alpha_bar[device]


class ScorePrediction:
    """A VE network whose output is σ times the score (s = F/σ, Song et al.'s tutorial
    code), see the module docstring. t(σ) = (σ/σ_max)²."""

    objective = "ve_score"

    def __init__(self, schedule: VESchedule):
        if not isinstance(schedule, VESchedule):
            raise UserError(f"σ·score prediction needs a VESchedule, got "
                             f"{type(schedule).__name__}")
        self.schedule = schedule

    def denoise(self, net, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """x̂₀ = x + σ net(x, t(σ)); x (B, ...), σ a number or (B,)."""
        sigma, t = network_time(self.schedule, sigma, x)
        return x + sigma.view(-1, *([1] * (x.ndim - 1))) * net(x, t)

    def at_levels(self, net, levels: Sequence[float], x: torch.Tensor) -> list[Callable]:
        """``denoise`` at each σ of ``levels``, as one callable y ↦ D(y, σ) each, for y like
        x: σ and t(σ) computed for the whole ladder at once, to the same numbers."""
        sigma, t = ladder_time(self.schedule, levels, x)
        return [_score_step(net, s, tt) for s, tt in zip(_cols(sigma, x), _rows(t, x))]

    def residuals_at_levels(self, net, levels: Sequence[float], x: torch.Tensor
                            ) -> tuple[list[float], Callable]:
        """D(y, σ_i) − y = c_i·f(y, i) at the levels σ_i of ``levels``, as (c, f): c_i = σ_i,
        f(y, i) = F at σ_i, for y like x (σ² times the score, without the cancellation of
        D(y, σ) − y); (f(y, i) * c_i).add_(y) is ``denoise``'s D to the bit."""
        sigma, t = ladder_time(self.schedule, levels, x)
        t = _time_rows(t, x)
        return sigma.tolist(), lambda y, i: net(y, t[i])

    def loss(self, net, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Mean ‖net(x₀ + σ n, t) + n‖² with σ = σ_max √t, for t (B,) and n like x0."""
        shape = (-1,) + (1,) * (x0.ndim - 1)
        sigma = (self.schedule.sigma_max * t.sqrt()).view(shape)
        return (net(x0 + sigma * noise, t) + noise).square().mean()

    def draw_t(self, batch: int, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
        """t ~ U(t_min, 1), drawn in float64 and cast to ``dtype``: (batch,) on the CPU."""
        t_min = self.schedule.t_min
        t = t_min + (1 - t_min) * torch.rand(batch, generator=generator, dtype=torch.float64)
        return t.to(dtype)


PARAMETERIZATIONS = {EpsPrediction.objective: EpsPrediction,
                     ScorePrediction.objective: ScorePrediction}


def get_parameterization(objective: str, schedule) -> EpsPrediction | ScorePrediction:
    """The parameterization of a training objective (``PARAMETERIZATIONS``) on ``schedule``."""
    if objective not in PARAMETERIZATIONS:
        raise UserError(f"unknown objective {objective!r}; known: {', '.join(PARAMETERIZATIONS)}")
    return PARAMETERIZATIONS[objective](schedule)


def network_time(schedule, sigma, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(σ, t): σ (B,) in x's dtype and the network's time t(σ) (B,), both on x's device.

    σ is rounded to x's dtype first, then t is computed in float64 from it and rounded to
    x's dtype. A number σ (a sampler's step) is checked against the schedule on the host,
    so the call never waits for the device; a tensor σ is checked where it lies.
    """
    if isinstance(sigma, torch.Tensor):
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(len(x)).clone()
        return sigma, schedule.t_from_sigma(sigma.double()).to(x.dtype)
    schedule.check_sigma(torch.tensor(float(sigma), dtype=x.dtype))
    sigma = torch.full((len(x),), float(sigma), dtype=x.dtype, device=x.device)
    return sigma, schedule.t_from_sigma(sigma.double(), check=False).to(x.dtype)


def ladder_time(schedule, levels: Sequence[float], x: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``network_time`` of every level of a ladder at once: (σ, t), each (L,) in x's dtype
    on x's device; the levels are checked on the host and sent in one transfer."""
    sigma = torch.tensor(list(levels), dtype=torch.float64).to(x.dtype)
    schedule.check_sigma(sigma)
    sigma = sigma.to(x.device)
    return sigma, schedule.t_from_sigma(sigma.double(), check=False).to(x.dtype)


def _cols(values: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per level, a (1, ...) tensor that broadcasts against x (B, ...)."""
    return values.view(-1, *([1] * x.ndim)).unbind(0)


def _time_rows(t: torch.Tensor, x: torch.Tensor) -> "RowReader":
    """Row i: the network's time input (B,) at level i for x (B, ...), contiguous."""
    return RowReader(t.view(-1, 1).expand(-1, len(x)).contiguous())


class RowReader:
    """Rows of an (L, ...) tensor by index, made ``chunk`` at a time by one ``unbind``: a
    row costs less than an index each (read in order, one unbind per ``chunk`` rows), and
    no per-row tensor is kept for the whole table (which would wake the garbage collector)."""

    __slots__ = ("table", "chunk", "start", "rows")

    def __init__(self, table: torch.Tensor, chunk: int = 64):
        self.table, self.chunk, self.start, self.rows = table, chunk, 0, ()

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> torch.Tensor:
        j = i - self.start
        if not 0 <= j < len(self.rows):
            if not 0 <= i < len(self.table):
                raise IndexError(f"row {i} of {len(self.table)}")
            self.start = i - i % self.chunk
            self.rows = self.table[self.start:self.start + self.chunk].unbind(0)
            j = i - self.start
        return self.rows[j]


def _rows(t: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per level, the network's time input (B,) for x (B, ...), contiguous."""
    return _time_rows(t, x).table.unbind(0)


def _eps_step(net, sigma: torch.Tensor, a: torch.Tensor, t: torch.Tensor) -> Callable:
    return lambda x: x - sigma * net(a * x, t)


def _score_step(net, sigma: torch.Tensor, t: torch.Tensor) -> Callable:
    return lambda x: (net(x, t) * sigma).add_(x)  # x + σ F, F's product summed in place
