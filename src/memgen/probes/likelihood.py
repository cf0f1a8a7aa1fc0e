"""Energies of trained models: the probability-flow ODE log-likelihood, exact divergence.

VE coordinates x = y + σ n (see ``memgen.diffusion.denoisers``); d = number of coordinates of x.
The probability-flow ODE in σ (Song et al. 2021, eq. 13; Karras et al. 2022, eq. 4) is

    dx/dσ = v(x, σ) = (x − D(x, σ))/σ = −σ ∇ log p_σ(x),

and p_σ is transported by it (∂p/∂σ + ∇·(p v) = 0), so along a trajectory

    d log p_σ(x(σ))/dσ = −∇·v,   ∇·v = (d − tr J_D)/σ,   J_D = ∂D/∂x

(instantaneous change of variables, Chen et al. 2018, Thm. 1). From the query
x = x(σ_min) up to σ_max:

    log p_{σ_min}(x) = log p_{σ_max}(x(σ_max)) + ∫_{σ_min}^{σ_max} ∇·v dσ.

In s = log σ (dσ = σ ds) the 1/σ factors cancel and the system integrated is

    dx/ds = x − D(x, e^s),   dΔ/ds = d − tr J_D(x, e^s),   Δ(log σ_min) = 0,

well conditioned over decades of σ. tr J_D is exact — one backward pass per coordinate
— so this is meant for low-dimensional data such as the 2D toy; there is no stochastic
(Hutchinson) trace. The energy is E_σ(x) = −log p_σ(x) (eq. 11 up to σ²; see the README's
“The theory: energies and attractors”).

The prior log p_{σ_max} is any callable (B, d) -> (B,). With the exact one (a Gaussian
data model's N(μ, Σ + σ_max² I), or ``EmpiricalPrior`` for the exact denoiser) the
result is exact up to the solver's tolerance. ``GaussianPrior.moment_matched`` is an
approximation: p_{σ_max} = p_data ∗ N(0, σ_max² I) is close to N(m, Σ + σ_max² I) only
when σ_max ≫ the data's scale. Otherwise log p carries the error log(p_{σ_max}/prior)
at the endpoint x(σ_max), a smooth function of x: read only energy differences then.
That error is largest for low-density queries: x(σ_max) − D ≈ (σ_max/σ_min)(x − D), so
points between patterns flow to the far tails of p_{σ_max}, where a Gaussian stand-in
is worst (four 2D points, σ_min = 0.05, σ_max = 20: 0.2 nats across a grid).
For a trained toy model the training set's own p_{σ_max} (``EmpiricalPrior``) is the
better prior: at large σ a trained model is close to the exact denoiser of its data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy.integrate import solve_ivp

from memgen.errors import UserError
from memgen.memory import energy as E
from memgen.memory.attractors import Memory, merge_endpoints, retrieve

LogPrior = Callable[[torch.Tensor], torch.Tensor]  # x (B, d) -> log p_{σ_max}(x) (B,)

# ------------------------------------------------------------------------------ priors


@dataclass(frozen=True)
class GaussianPrior:
    """log N(x; mean, diag(var)) for rows of x: (B, d) -> (B,) (float64)."""

    mean: torch.Tensor  # (d,)
    var: torch.Tensor  # (d,) positive

    def __post_init__(self):
        if self.mean.ndim != 1 or self.var.shape != self.mean.shape:
            raise UserError("mean and var must be (d,) tensors of one shape")
        if not bool((self.var > 0).all()):
            raise UserError("var must be positive")

    @classmethod
    def moment_matched(cls, data: torch.Tensor, sigma: float) -> "GaussianPrior":
        """N(m, diag(s² + σ²)) with m, s² the data's per-coordinate mean and variance.

        Exact for Gaussian data with diagonal covariance; for other data an approximation
        of p_σ that is good only when σ ≫ the data's scale (see the module notes).
        data: (N, ...) samples.
        """
        if not sigma > 0 or len(data) == 0:
            raise UserError("need sigma > 0 and non-empty data")
        flat = data.reshape(len(data), -1).double()
        return cls(flat.mean(0), flat.var(0, unbiased=False) + sigma**2)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(len(x), -1).double()
        mean, var = self.mean.to(flat), self.var.to(flat)
        quad = ((flat - mean).square() / var).sum(1)
        return -0.5 * (quad + var.log().sum() + flat.shape[1] * math.log(2 * math.pi))


@dataclass(frozen=True)
class EmpiricalPrior:
    """log p_σ(x) of p_σ = (1/N) Σ_i N(y_i, σ² I), exactly: (B, ...) -> (B,)."""

    patterns: torch.Tensor  # (N, ...)
    sigma: float

    def __post_init__(self):
        if not self.sigma > 0 or len(self.patterns) == 0:
            raise UserError("need sigma > 0 and non-empty patterns")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        flat = self.patterns.reshape(len(self.patterns), -1).double()
        return -E.empirical_energy(x.reshape(len(x), -1).to(flat), flat, self.sigma)


# ------------------------------------------------------------------------- divergence


def jacobian_trace(denoiser, x: torch.Tensor, sigma) -> torch.Tensor:
    """tr ∂D(x, σ)/∂x for each row of x, exactly (d backward passes): (B,).

    x: (B, ...); sigma: float or (B,). Rows must not interact inside D (true of every
    memgen denoiser: no batch statistics), so the gradient of Σ_b D_b,i picks row b's
    ∂D_i/∂x_i.
    """
    return _denoise_and_trace(denoiser, x, sigma)[1]


def _denoise_and_trace(denoiser, x: torch.Tensor, sigma) -> tuple[torch.Tensor, torch.Tensor]:
    """(D(x, σ) detached, tr J_D) in one forward pass."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = denoiser(x, sigma)
        flat, d = out.reshape(len(x), -1), x[0].numel()
        trace = x.new_zeros(len(x))
        if not out.requires_grad:  # D does not depend on x
            return out.detach(), trace
        for i in range(d):
            (g,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=i < d - 1,
                                       allow_unused=True)
            if g is not None:
                trace = trace + g.reshape(len(x), -1)[:, i]
    return out.detach(), trace.detach()


# ------------------------------------------------------------------- PF-ODE likelihood


@dataclass(frozen=True)
class PFODELikelihood:
    """log p_{σ_min} of B queries from the probability-flow ODE (module notes)."""

    log_p: torch.Tensor  # (B,) float64: log p_{σ_min}(x)
    endpoint: torch.Tensor  # (B, ...) x(σ_max), dtype of the queries
    log_prior: torch.Tensor  # (B,) log p_{σ_max}(x(σ_max))
    delta: torch.Tensor  # (B,) ∫ ∇·v dσ = log_p − log_prior
    sigma_min: float
    sigma_max: float
    nfev: int  # batched right-hand-side evaluations (each: 1 forward + d backward passes)
    status: int  # scipy's solve_ivp status: 0 reached σ_max, −1 a step failed
    message: str

    @property
    def energy(self) -> torch.Tensor:
        """E = −log p_{σ_min}(x): (B,)."""
        return -self.log_p

    @property
    def success(self) -> bool:
        return self.status == 0


def pf_ode_log_likelihood(denoiser, x: torch.Tensor, sigma_min: float, sigma_max: float,
                          prior: LogPrior, *, rtol: float = 1e-4, atol: float = 1e-4,
                          method: str = "RK45") -> PFODELikelihood:
    """log p_{σ_min}(x) = log p_{σ_max}(x(σ_max)) + ∫ (d − tr J_D) d log σ (module notes).

    x: (B, ...) queries, in the dtype and on the device the denoiser expects.
    The state (x, Δ) of the whole batch is one system for ``scipy.integrate.solve_ivp``
    (``method`` RK45, DOP853, ...) in s = log σ. scipy's error test is the RMS over the
    state; the tolerances are divided by √(state size) here, which turns it into an L2
    test: every component (each query's x and Δ) then meets atol + rtol·|value|.
    That bounds the local error of a step; the global error of log p can be 10–100
    times larger where trajectories separate (queries near a separatrix between
    patterns at small σ_min). For float32 denoisers keep rtol/√(state size) above the
    float32 resolution (≈ 1e-7), or the error estimate is rounding noise.
    """
    if not 0 < sigma_min < sigma_max:
        raise UserError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    if x.ndim < 2 or len(x) == 0:
        raise UserError("x must be a non-empty (B, ...) tensor")
    if not (rtol > 0 and atol > 0):
        raise UserError("rtol and atol must be positive")
    n = x.numel() + len(x)
    state0 = np.concatenate([x.detach().double().cpu().numpy().ravel(), np.zeros(len(x))])
    sol = solve_ivp(_rhs(denoiser, x), (math.log(sigma_min), math.log(sigma_max)), state0,
                    method=method, rtol=rtol / math.sqrt(n), atol=atol / math.sqrt(n))
    final = torch.from_numpy(sol.y[:, -1]).to(x.device)
    endpoint = final[:x.numel()].reshape(x.shape).to(x.dtype)
    delta = final[x.numel():]
    log_prior = prior(endpoint).double().reshape(-1)
    if log_prior.shape != (len(x),):
        raise UserError(f"prior must return shape ({len(x)},), got {tuple(log_prior.shape)}")
    return PFODELikelihood(log_prior + delta, endpoint, log_prior, delta, float(sigma_min),
                           float(sigma_max), int(sol.nfev), int(sol.status), str(sol.message))


def _rhs(denoiser, like: torch.Tensor):
    """f(s, state) of the system in s = log σ on the flat float64 numpy state."""
    size, d = like.numel(), like[0].numel()

    def f(s: float, state: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(state[:size]).reshape(like.shape).to(like.device, like.dtype)
        den, trace = _denoise_and_trace(denoiser, x, math.exp(s))
        dx = (x - den).reshape(-1).double()
        return torch.cat([dx, d - trace.double()]).cpu().numpy()

    return f


# ---------------------------------------------------------------------- 2D energy grid


@dataclass(frozen=True)
class EnergyGrid:
    """E_σ(x) = −log p_σ(x) of a model on the square [−extent, extent]²."""

    axis: torch.Tensor  # (G,) coordinates of the grid lines (both axes)
    energy: torch.Tensor  # (G, G) float64, rows along y (imshow with origin="lower")
    sigma: float
    likelihood: PFODELikelihood  # of the G² points, x fastest


def square_grid(extent: float, resolution: int, dtype=torch.float64, device=None
                ) -> torch.Tensor:
    """(G², 2) points of a G × G grid on [−extent, extent]², x varying fastest."""
    if not extent > 0 or resolution < 2:
        raise UserError("need extent > 0 and resolution >= 2")
    axis = torch.linspace(-extent, extent, resolution, dtype=dtype, device=device)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)


def learned_energy_grid(denoiser, extent: float, resolution: int, sigma: float,
                        sigma_max: float, prior: LogPrior, *, dtype=torch.float32,
                        device=None, batch: int | None = None, **solver) -> EnergyGrid:
    """−log p_σ of a 2D model on a resolution² grid by ``pf_ode_log_likelihood``.

    dtype/device: those of the denoiser's inputs. batch: points per ODE solve (None: all
    at once; smaller batches let easy regions take longer steps). solver: rtol, atol,
    method.
    """
    points = square_grid(extent, resolution, dtype, device)
    step = len(points) if batch is None else batch
    if step < 1:
        raise UserError("batch must be >= 1")
    parts = [pf_ode_log_likelihood(denoiser, points[i:i + step], sigma, sigma_max, prior,
                                   **solver) for i in range(0, len(points), step)]
    result = _concatenate(parts)
    g = resolution
    return EnergyGrid(points[:g, 0].double().cpu(), result.energy.reshape(g, g).cpu(),
                      float(sigma), result)


def _concatenate(parts: list[PFODELikelihood]) -> PFODELikelihood:
    """One result from batches: evaluations summed, the worst status kept."""
    if len(parts) == 1:
        return parts[0]
    worst = min(parts, key=lambda p: p.status)
    return PFODELikelihood(
        torch.cat([p.log_p for p in parts]), torch.cat([p.endpoint for p in parts]),
        torch.cat([p.log_prior for p in parts]), torch.cat([p.delta for p in parts]),
        parts[0].sigma_min, parts[0].sigma_max, sum(p.nfev for p in parts), worst.status,
        worst.message)


# ------------------------------------------------------------------ learned attractors


@dataclass(frozen=True)
class LearnedAttractors:
    """Modes of generated samples, largest cluster first (A modes, S samples)."""

    centres: torch.Tensor  # (A, d) the modes
    counts: np.ndarray  # (A,) samples that flowed to each mode
    assignment: np.ndarray  # (S,) mode index of each sample
    bandwidth: float
    memorized: np.ndarray | None = None  # (A,) bool: a stored pattern dominates the mode
    nearest_pattern: np.ndarray | None = None  # (A,) index of the closest training point
    pattern_distance: np.ndarray | None = None  # (A,) its distance
    max_weight: np.ndarray | None = None  # (A,) largest posterior weight of a pattern


def learned_attractors(samples: torch.Tensor, sigma: float,
                       patterns: torch.Tensor | None = None, *,
                       bandwidth: float | None = None, store_weight: float = 0.75,
                       store_tol: float | None = None, max_iter: int = 500
                       ) -> LearnedAttractors:
    """Cluster a model's samples into its attractors by mean shift, the memgen way.

    samples: (S, ...) final samples of a sampler that stops at noise level σ = sigma
    (the toy's Euler–Maruyama stops at σ(t_min) = √1e-3 ≈ 0.032, without a final
    denoising step). They are draws of the model's p_σ, whose attractors are its modes;
    around a mode a they scatter as ≈ N(a, σ² I). Each sample ascends the kernel density
    estimate p̂(x) = (1/S) Σ_j N(x; s_j, h² I) (bandwidth h, default σ) by the fixed-point
    retrieval x ← Σ_j softmax_j(−‖x − s_j‖²/(2h²)) s_j — mean shift (Fukunaga & Hostetler
    1975), i.e. ``attractors.retrieve`` with the samples as patterns, β = 1/(2h²) — and
    endpoints closer than h/2 are merged (``merge_endpoints``; distinct modes of p̂ lie
    ≳ h apart, endpoints of one mode agree to ≪ h). p̂ ≈ the model's density at
    σ_eff = √(σ² + h²), so a cluster is one mode for a radius-free reason: no cut-off
    splits a blob's tail from it, and two attractors closer than ≈ 2σ_eff (whose sample
    blobs overlap) are one, which is the resolution samples at σ can give.

    patterns: (K, ...) training set. A mode is memorized when one pattern dominates the
    exact posterior there, softmax_i(−‖a − y_i‖²/(2σ_eff²)) > store_weight (the rule of
    ``attractors``: a mixture of two patterns or a point of a dense ring is not
    memorized; the default ¾ rather than ½ because a sampled mode of a two-pattern
    mixture has weight ½ ± sampling noise, an isolated memory ≈ 1), and that pattern
    lies within store_tol (default 2σ_eff: far from all data the nearest pattern always
    dominates the softmax, so the weight alone would call a stray mode memorized).
    Modes are reported down to a single sample; a mode that few samples reach is a KDE
    bump of scattered samples rather than evidence of an attractor, and its count says
    so. Cost: O(S²) per mean-shift step (5,000 samples ≈ 30 s on one CPU thread).
    """
    if len(samples) == 0 or not sigma > 0:
        raise UserError("need non-empty samples and sigma > 0")
    h = float(sigma if bandwidth is None else bandwidth)
    if not h > 0:
        raise UserError(f"bandwidth must be positive, got {h}")
    flat = samples.reshape(len(samples), -1)
    run = retrieve(Memory(flat, E.kernel_gamma(h), "kernel"), flat.clone(), tol=1e-3 * h,
                   max_iter=max_iter)
    reps, assignment = merge_endpoints(run.endpoints, run.energies, h / 2)
    counts = np.bincount(assignment, minlength=len(reps))
    order = np.argsort(-counts, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    centres = run.endpoints[torch.from_numpy(reps[order]).to(flat.device)]
    found = LearnedAttractors(centres, counts[order], rank[assignment], h)
    if patterns is None:
        return found
    return _label_stored(found, patterns.reshape(len(patterns), -1).to(flat),
                         math.hypot(sigma, h), store_weight, store_tol)


def _label_stored(found: LearnedAttractors, patterns: torch.Tensor, sigma_eff: float,
                  store_weight: float, store_tol: float | None) -> LearnedAttractors:
    dist = torch.cdist(found.centres, patterns)  # (A, K)
    nearest = dist.min(1)
    w_max = E.kernel_weights(found.centres, patterns, E.kernel_gamma(sigma_eff)).max(1).values
    tol = 2 * sigma_eff if store_tol is None else store_tol
    memorized = (w_max > store_weight) & (nearest.values <= tol)
    return LearnedAttractors(found.centres, found.counts, found.assignment, found.bandwidth,
                             memorized.cpu().numpy(), nearest.indices.cpu().numpy(),
                             nearest.values.double().cpu().numpy(),
                             w_max.double().cpu().numpy())
