"""Basins and energies of trained diffusion models: critical noise levels (basin sizes),
relative energies along a path, and the curvature (Hessian spectrum) of E_σ at attractors.

Every analysis sees the model only through a denoiser D(x, σ) in variance-exploding (VE)
coordinates (``memgen.diffusion.denoisers``): x = y + σ n, so at noise level σ

    score      s_σ(x)   = (D(x, σ) − x)/σ²
    energy     E_σ(x)   = −log p_σ(x),   ∇E_σ(x) = (x − D(x, σ))/σ²
    Hessian    ∇²E_σ(x) = (I − J_D(x))/σ²,   J_D = ∂D(x, σ)/∂x

Symbols → names (B samples or points, G noise levels, n trials, D = numel of one sample):
    P(σ)   share of n noisings x0 + σ n_j carried back to x0     ``Recovery.probability``
    σ*     the largest σ with P(σ) ≥ p (critical level)           ``CriticalTime.sigma``
    t*     the schedule time of σ*                                 ``CriticalTime.t``
    r*     basin radius mean_j ‖x0 − x_σ*,j‖ = σ* mean_j ‖n_j‖ ≈ σ*√D   ``CriticalTime.radius``
    ΔE     E_σ(x_ref) − E_σ(x) (Raya & Ambrogioni 2023)            ``RelativeEnergy.delta``

Radii and σ are VE quantities; a VP model's x_t = √ᾱ x_ve is a rescaled copy. For an
ε-network, ``EpsDenoiser`` converts with ᾱ_t = Π_{s≤t}(1 − β_s) (the public reference code
used Π β_t in its relative-energy code); build it with ``clip=False`` for energies and
curvature, since clipping x̂ to [−1, 1] is not the model's score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

from memgen.diffusion.samplers import SAMPLERS, StackedGenerator, get_sampler, ve_sigmas
from memgen.errors import UserError

F64 = torch.float64
METRICS = ("rms", "l2")
_DETERMINISTIC = ("ddim", "heun")  # registry samplers that draw no noise (ddim: η = 0)
_NOISE_TAG, _SAMPLER_TAG = 1, 2  # last entry of a trial's stream key (seed, id, trial, tag)


# ------------------------------------------------------------------------ validation


def _check_points(x, name: str = "x") -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or len(x) == 0 or x[0].numel() == 0:
        raise UserError(f"{name} must be a non-empty (B, ...) tensor with at least one "
                         "coordinate per sample")
    if not torch.isfinite(x).all():
        raise UserError(f"{name} must be finite (no NaN or inf)")
    return x


def _check_sigma(sigma) -> float:
    sigma = float(sigma)
    if not (math.isfinite(sigma) and sigma > 0):
        raise UserError(f"sigma must be a finite positive number, got {sigma}")
    return sigma


def _check_chunk(chunk) -> None:
    if chunk is not None and (int(chunk) != chunk or chunk < 1):
        raise UserError(f"chunk must be None or a positive integer, got {chunk}")


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
    (see ``_Rescaled``); its smallest level σ·rel_min must lie in a network's schedule.
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
        if self.sampler not in SAMPLERS:
            raise UserError(f"unknown sampler {self.sampler!r}; known: {', '.join(SAMPLERS)}")
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
    x0 = _check_points(x0, "x0")
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
    x0 = _check_points(x0, "x0")
    _check_chunk(chunk)
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
    with the rescaled denoiser D̃(x, u) = D(x, c u) and noise c z (exact, see ``_Rescaled``)."""
    sampler, u = get_sampler(config.sampler), config.ladder()
    step, out = chunk or len(start), []
    for i in range(0, len(start), step):
        c = scale[i:i + step]
        gen = (None if config.sampler in _DETERMINISTIC
               else _ScaledGenerator(keys[i:i + step], c, start.device))
        out.append(sampler(_Rescaled(denoiser, c), start[i:i + step], u, generator=gen))
    return torch.cat(out)


class _Rescaled:
    """D̃(x, u) = D(x, c u), row r at its own level c_r u.

    Every registry sampler's step s → s' is invariant under s = c u, s' = c u' once its
    noise is multiplied by c: the drift terms depend on x, D and the ratios s'/s,
    (s² − s'²)/s² only (DDIM/Euler x' = x̂ + (s'/s)(x − x̂); Heun; Euler–Maruyama's
    (s² − s'²)·(x̂ − x)/s²), and every noise term is s or √(s² − s'²) times z, i.e. c times
    the same term in u. So one call on the ladder u runs each row on its own ladder c_r u.
    """

    def __init__(self, denoiser, scale: torch.Tensor):
        self.denoiser, self.scale = denoiser, scale

    def __call__(self, x: torch.Tensor, u) -> torch.Tensor:
        sigma = self.scale.to(x.device) * torch.as_tensor(u, dtype=F64, device=x.device)
        return self.denoiser(x, sigma.to(x.dtype))


class _ScaledGenerator(StackedGenerator):
    """Per-row streams whose normals are multiplied by the row's scale c (see ``_Rescaled``)."""

    def __init__(self, seeds, scale: torch.Tensor, device):
        super().__init__(seeds, device=device)
        self.scale = scale

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        z = super().randn_like(x)
        return z * self.scale.to(z).view(-1, *([1] * (x.ndim - 1)))


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
    sigma_lo, sigma_hi = _check_sigma(sigma_lo), _check_sigma(sigma_hi)
    if not sigma_lo < sigma_hi or not (math.isfinite(rtol) and rtol > 0):
        raise UserError(f"need 0 < sigma_lo < sigma_hi and rtol > 0, got "
                         f"{sigma_lo}, {sigma_hi}, {rtol}")
    if schedule is not None:
        _check_schedule(schedule, sigma_lo * config.rel_min, sigma_hi)
    x0 = _check_points(x0, "x0")
    _check_chunk(chunk)
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


# ------------------------------------------------------------------- relative energy


@dataclass(frozen=True)
class RelativeEnergy:
    """ΔE = E_σ(x_ref) − E_σ(x) per pair, with its quadrature error. All (B,)."""

    delta: torch.Tensor  # float64
    error: torch.Tensor  # float64, estimated absolute error of delta
    converged: torch.Tensor  # bool, the tolerance was met before max_panels
    panels: torch.Tensor  # int64, Gauss–Legendre panels of the accepted estimate


def relative_energy(denoiser, x: torch.Tensor, x_ref: torch.Tensor, sigma: float, *,
                    rtol: float = 1e-8, atol: float = 1e-10, order: int = 16,
                    max_panels: int = 1024, chunk: int | None = None) -> RelativeEnergy:
    """ΔE(x → x_ref) = ∫_0^{π/2} ∇E_σ(x(α))·x'(α) dα (Raya & Ambrogioni 2023), batched.

    Path x(α) = cos α·x + sin α·x_ref, x'(α) = −sin α·x + cos α·x_ref, ∇E_σ = (x − D(x, σ))/σ².
    x, x_ref: (B, ...) pairs. Quadrature: ``order``-point Gauss–Legendre on m = 1, 2, 4, …
    equal panels of [0, π/2], all nodes of all unfinished pairs in one denoiser call
    (``chunk`` rows at a time). A pair stops when |I_2m − I_m| ≤ max(atol, rtol|I_2m|,
    roundoff); its error is |I_2m − I_m| + roundoff, roundoff = 50 ε ∫|g| (QUADPACK's
    term, ε of x's dtype) — an over-estimate for the smooth integrand. Integrands are
    summed in float64; pass float64 x (and model) for float64 accuracy. σ (e.g. a small σ,
    or ``schedule.sigma(t)``) is the caller's choice; for a learned, non-conservative score
    ΔE depends on the path, and this is the quarter circle of the reference.
    """
    x, x_ref, sigma = _check_points(x, "x"), _check_points(x_ref, "x_ref"), _check_sigma(sigma)
    if x.shape != x_ref.shape:
        raise UserError(f"x and x_ref must have one shape, got {tuple(x.shape)} and "
                         f"{tuple(x_ref.shape)}")
    if int(order) != order or order < 1 or int(max_panels) != max_panels or max_panels < 2:
        raise UserError("order must be an integer >= 1 and max_panels an integer >= 2")
    if not (rtol >= 0 and atol >= 0):
        raise UserError(f"rtol and atol must be >= 0, got {rtol}, {atol}")
    _check_chunk(chunk)
    integrate = partial(_path_integral, denoiser, sigma, np.polynomial.legendre.leggauss(order),
                        chunk)
    eps = 50 * torch.finfo(x.dtype).eps
    delta, _ = integrate(x, x_ref, 1)
    error, panels = torch.full_like(delta, math.inf), torch.ones(len(x), dtype=torch.int64)
    done, m = torch.zeros(len(x), dtype=torch.bool), 1
    while not done.all() and m < max_panels:
        m, idx = 2 * m, (~done).nonzero().squeeze(1)
        cur, mass = integrate(x[idx], x_ref[idx], m)
        diff, roundoff = (cur - delta[idx]).abs(), eps * mass
        tol = torch.clamp(rtol * cur.abs(), min=atol).maximum(roundoff)
        delta[idx], error[idx], panels[idx], done[idx] = cur, diff + roundoff, m, diff <= tol
    return RelativeEnergy(delta, error, done, panels)


def _path_integral(denoiser, sigma, rule, chunk, x, x_ref, panels) -> tuple:
    """Composite Gauss–Legendre of g(α) = ∇E_σ(x(α))·x'(α) on ``panels`` equal panels:
    (∫g, ∫|g|), each (B,) float64."""
    nodes, weights = (torch.as_tensor(v, dtype=F64) for v in rule)
    width = (math.pi / 2) / panels
    alpha = (width * (torch.arange(panels, dtype=F64)[:, None] + (nodes + 1) / 2)).reshape(-1)
    w = (width / 2 * weights).repeat(panels)  # (M,)
    b, shape = len(x), x.shape[1:]
    x64, ref64 = x.reshape(b, 1, -1).double(), x_ref.reshape(b, 1, -1).double()
    step = max(1, (chunk or b * len(alpha)) // b)
    parts = []
    for a in alpha.to(x.device).split(step):
        c, s = a.cos()[None, :, None], a.sin()[None, :, None]  # (1, k, 1)
        points = (c * x64 + s * ref64).to(x.dtype)  # (B, k, D)
        with torch.no_grad():
            den = denoiser(points.reshape(-1, *shape), sigma).reshape(points.shape)
        grad = (points - den).double() / sigma**2
        parts.append((grad * (c * ref64 - s * x64)).sum(-1))  # (B, k)
    g = torch.cat(parts, dim=1).cpu()
    return g @ w, g.abs() @ w


# ------------------------------------------------------------------------- curvature


@dataclass(frozen=True)
class HessianSpectrum:
    """Eigenvalues of ∇²E_σ at B points, ascending; trace and asymmetry from dense runs."""

    eigenvalues: torch.Tensor  # (B, k) float64, ascending
    dim: int  # D, coordinates per point
    trace: torch.Tensor | None = None  # (B,) tr ∇²E_σ = (D − tr J_D)/σ²
    asymmetry: torch.Tensor | None = None  # (B,) ‖(J − Jᵀ)/2‖_F / ‖J‖_F, 0 if D is exact

    @property
    def mean_curvature(self) -> torch.Tensor | None:
        """tr ∇²E_σ / D (None for matrix-free runs)."""
        return None if self.trace is None else self.trace / self.dim


def _flat_map(denoiser, shape, sigma: float):
    """v (D,) ↦ D(v as (1, *shape), σ) flattened: the denoiser at one point."""
    def one_point(v: torch.Tensor) -> torch.Tensor:
        return denoiser(v.reshape(1, *shape), sigma).reshape(-1)
    return one_point


def denoiser_jacobian(denoiser, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """J_D = ∂D(x, σ)/∂x at each point, forward mode (torch.func.jacfwd): (B, D, D)."""
    x, sigma = _check_points(x, "x"), _check_sigma(sigma)
    f = _flat_map(denoiser, x.shape[1:], sigma)
    return torch.stack([torch.func.jacfwd(f)(point.reshape(-1)) for point in x])


def hessian(denoiser, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Dense ∇²E_σ = (I − (J_D + J_Dᵀ)/2)/σ² (the symmetric part): (B, D, D) float64.

    For small D (2-D toys, analytic models); J_D is symmetric for an exact denoiser
    (J_D = Cov_post/σ²), and a learned one's antisymmetric part is dropped.
    """
    return _symmetric_hessian(denoiser_jacobian(denoiser, x, sigma).double(), float(sigma))


def _symmetric_hessian(jac: torch.Tensor, sigma: float) -> torch.Tensor:
    eye = torch.eye(jac.shape[-1], dtype=jac.dtype, device=jac.device)
    return (eye - (jac + jac.mT) / 2) / sigma**2


def hessian_spectrum(denoiser, x: torch.Tensor, sigma: float) -> HessianSpectrum:
    """All D eigenvalues of ``hessian`` (eigvalsh), its trace and the Jacobian's asymmetry."""
    jac = denoiser_jacobian(denoiser, x, sigma).double()
    sigma, dim = float(sigma), jac.shape[-1]
    eigenvalues = torch.linalg.eigvalsh(_symmetric_hessian(jac, sigma))
    trace = (dim - jac.diagonal(dim1=-2, dim2=-1).sum(-1)) / sigma**2
    norm = jac.norm(dim=(-2, -1))
    asymmetry = torch.where(norm > 0, ((jac - jac.mT) / 2).norm(dim=(-2, -1)) / norm, 0.0)
    return HessianSpectrum(eigenvalues.cpu(), dim, trace.cpu(), asymmetry.cpu())


def hessian_eigsh(denoiser, x: torch.Tensor, sigma: float, k: int = 6, *, which: str = "LA",
                  symmetrize: bool = True, tol: float | None = None, ncv: int | None = None,
                  maxiter: int | None = None, seed: int = 0) -> HessianSpectrum:
    """k extreme eigenvalues of ∇²E_σ per point, matrix-free: ARPACK Lanczos (eigsh) on
    H v = (v − J_s v)/σ², J_s v = (J_D v + J_Dᵀ v)/2 by one jvp and one vjp.

    which: "LA" largest, "SA" smallest (algebraic). symmetrize=False uses J_D v alone (half
    the cost; only right when J_D is symmetric, e.g. an exact denoiser). Points go one at a
    time; tol (ARPACK's relative accuracy) defaults to 1e-10 for float64 x and 1e-5
    otherwise; ncv, maxiter as in eigsh. The start vector comes from numpy's PCG64(seed),
    so runs repeat exactly. Eigenvalues ARPACK leaves unconverged are NaN (sorted last).
    Near a memory most directions have curvature ≈ 1/σ² (posterior variance ≈ 0), so the
    top of the spectrum is clustered there and "LA" converges slowly; "SA" (flat and
    unstable directions) is the informative end.
    """
    x, sigma = _check_points(x, "x"), _check_sigma(sigma)
    dim = x[0].numel()
    if which not in ("LA", "SA"):
        raise UserError(f"which must be 'LA' or 'SA', got {which!r}")
    if int(k) != k or not 1 <= k < dim:
        raise UserError(f"k must be an integer in [1, D - 1] = [1, {dim - 1}], got {k}")
    tol = (1e-10 if x.dtype == F64 else 1e-5) if tol is None else tol
    options = dict(k=k, which=which, tol=tol, ncv=ncv, maxiter=maxiter,
                   v0=np.random.default_rng(seed).standard_normal(dim))
    out = [_extreme_eigenvalues(_hessian_operator(denoiser, point, sigma, symmetrize), options)
           for point in x]
    return HessianSpectrum(torch.as_tensor(np.stack(out), dtype=F64), dim)


def _extreme_eigenvalues(op: LinearOperator, options: dict) -> np.ndarray:
    """eigsh's eigenvalues, ascending, NaN-padded to k when ARPACK does not converge."""
    try:
        values = eigsh(op, return_eigenvectors=False, **options)
    except ArpackNoConvergence as err:
        values = np.asarray(err.eigenvalues, dtype=np.float64)
    return np.sort(np.concatenate([values, np.full(options["k"] - len(values), np.nan)]))


def _hessian_operator(denoiser, point: torch.Tensor, sigma: float,
                      symmetrize: bool) -> LinearOperator:
    """v ↦ (v − J_s v)/σ² at one point, as a float64 scipy LinearOperator."""
    f = _flat_map(denoiser, point.shape, sigma)
    p = point.reshape(-1)
    vjp = torch.func.vjp(f, p)[1] if symmetrize else None

    def matvec(v: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64).reshape(-1)).to(p)
        jv = torch.func.jvp(f, (p,), (t,))[1]
        if symmetrize:
            jv = (jv + vjp(t)[0]) / 2
        return ((t - jv) / sigma**2).double().cpu().numpy()

    return LinearOperator((p.numel(), p.numel()), matvec=matvec, dtype=np.float64)


__all__ = ["RecoveryConfig", "Recovery", "CriticalTime", "RelativeEnergy", "HessianSpectrum",
           "trial_noise", "recovery_probability", "critical_time", "bisection_rounds",
           "ball_log_volume", "relative_energy", "denoiser_jacobian", "hessian",
           "hessian_spectrum", "hessian_eigsh"]
