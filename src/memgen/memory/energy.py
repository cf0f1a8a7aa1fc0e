"""Energies of associative memories and of the empirical denoising problem.

Symbols (paper §C.2 and project page; x: (B, D) queries, y_i: (N, D) stored patterns):
    DenseAM      E(x)   = ½‖x‖² − (1/β) log Σ_i exp(β xᵀy_i)                       (eq. 10)
    empirical    E_σ(x) = −log p_σ(x),  p_σ = (1/N) Σ_i N(x; a y_i, σ² I)
                        = ‖x‖²/(2σ²) − log Σ_i exp(a xᵀy_i/σ² − a²‖y_i‖²/(2σ²)) + C_σ
                 with a = √ᾱ (VP) or 1 (VE); β_σ = a/σ² is its inverse temperature.
    kernel       E(x)   = −(1/γ) log Σ_i exp(−γ‖x − y_i‖²)     (eq. 13, which writes β;
                 VE noise σ ⇔ γ = 1/(2σ²), so E_σ = γ·E + const with patterns a·y_i)
    circle       E(R)   = R² + 1 − (1/γ) log I0(2γR): the kernel energy of the uniform
                 unit circle, up to the constant −(1/γ) log N.

Symbols → names: the three inverse temperatures are three different numbers —
    β    DenseAM inverse temperature (eq. 10)            ``inverse_temperature``
    γ    Gaussian kernel's 1/(2σ²) (eq. 13's β)          ``gamma``, ``kernel_gamma(σ)``
    β_σ  a/σ² of the empirical energy                    ``beta_sigma(a, σ)``

Every function is batched over x, stable at large β and γ (log-sum-exp), and keeps the
dtype and device of its inputs: pass float64 tensors for float64 results. Logits are
formed in float64 whatever the input dtype, and shifted by their row maximum before a
float32 softmax, so float32 weights are exact to float32 rounding (~1e-7): the kernel's
squared distances come from :func:`memgen.neighbours.pairwise_sq_dist` (data centred
on the patterns' mean, a float32 GEMM screen, float64 wherever a weight can see the
difference), DenseAM's xᵀy from a float64 GEMM. The expanded form ‖x‖² − 2xᵀy + ‖y‖²
in float32 would put errors of γ·u·(‖x‖² + ‖y‖²) into every logit.
Gradients are analytic; Hessians are returned as (B, D, D) and only meant for
moderate D (see ``memgen.memory.attractors.min_hessian_eigenvalue`` for the smallest
eigenvalue through the Gram matrix of the patterns).
"""
from __future__ import annotations

import math

import torch

from memgen.errors import UserError
from memgen.neighbours import pairwise_sq_dist

_NEGLIGIBLE_LOG_WEIGHT = 40.0  # weights below e^−40/N of a row's largest are left screened

# ---------------------------------------------------------------------------- DenseAM
# β = ``inverse_temperature`` (eq. 10).


def dense_am_energy(x: torch.Tensor, patterns: torch.Tensor,
                    inverse_temperature: float) -> torch.Tensor:
    """½‖x‖² − (1/β) log Σ exp(β xᵀy_i) (paper eq. 10), β = inverse_temperature.
    x: (B, D) -> (B,)."""
    lse = torch.logsumexp(_dense_am_logits64(x, patterns, inverse_temperature), dim=-1)
    return (0.5 * x.double().square().sum(-1) - lse / inverse_temperature).to(x.dtype)


def dense_am_weights(x: torch.Tensor, patterns: torch.Tensor,
                     inverse_temperature: float) -> torch.Tensor:
    """softmax_i(β xᵀy_i): (B, N)."""
    return _softmax(_dense_am_logits64(x, patterns, inverse_temperature), x.dtype)


def _dense_am_logits64(x: torch.Tensor, patterns: torch.Tensor,
                       inverse_temperature: float) -> torch.Tensor:
    """β xᵀy_i: (B, N) float64, from one float64 GEMM."""
    return inverse_temperature * (x.double() @ patterns.double().T)


def dense_am_grad(x: torch.Tensor, patterns: torch.Tensor,
                  inverse_temperature: float) -> torch.Tensor:
    """∇E = x − Σ_i w_i y_i with w = softmax(β xᵀy): (B, D)."""
    return x - dense_am_weights(x, patterns, inverse_temperature) @ patterns


def dense_am_hessian(x: torch.Tensor, patterns: torch.Tensor,
                     inverse_temperature: float) -> torch.Tensor:
    """∇²E = I − β Cov_w(y): (B, D, D)."""
    w = dense_am_weights(x, patterns, inverse_temperature)
    return _identity_minus(weighted_covariance(w, patterns), inverse_temperature, 1.0)


# -------------------------------------------------------------- Gaussian kernel (eq. 13)
# γ = ``gamma``, the kernel's 1/(2σ²) (eq. 13 calls it β).


def _kernel_logits64(x: torch.Tensor, patterns: torch.Tensor, gamma) -> torch.Tensor:
    """−γ‖x − y_i‖²: (B, N) float64, exact wherever exp of it is not negligible.

    gamma: a float, or a (B,) tensor of per-row values. Squared distances within
    (40 + log N)/γ of a row's nearest pattern are float64-exact
    (:func:`~memgen.neighbours.pairwise_sq_dist`); all others carry float32 screening
    error but weigh less than e^−40/N of the largest, e^−40 ≈ 4e-18 together.
    """
    cutoff = _NEGLIGIBLE_LOG_WEIGHT + math.log(len(patterns))
    if isinstance(gamma, torch.Tensor):
        gamma = gamma.to(device=x.device, dtype=torch.float64).reshape(-1, 1)
        within = cutoff / gamma.squeeze(1)
    else:
        within = cutoff / gamma
    sq = pairwise_sq_dist(x, patterns, within=within)
    return sq * -gamma if sq.requires_grad else sq.mul_(-gamma)


def kernel_energy(x: torch.Tensor, patterns: torch.Tensor, gamma: float) -> torch.Tensor:
    """−(1/γ) log Σ exp(−γ‖x − y_i‖²), γ = gamma. x: (B, D) -> (B,)."""
    return (-torch.logsumexp(_kernel_logits64(x, patterns, gamma), dim=-1) / gamma).to(x.dtype)


def kernel_weights(x: torch.Tensor, patterns: torch.Tensor, gamma: float) -> torch.Tensor:
    """Posterior weights softmax_i(−γ‖x − y_i‖²): (B, N); gamma a float or (B,) tensor."""
    return _softmax(_kernel_logits64(x, patterns, gamma), x.dtype)


def kernel_grad(x: torch.Tensor, patterns: torch.Tensor, gamma: float) -> torch.Tensor:
    """∇E = 2(x − Σ_i w_i y_i): (B, D)."""
    return 2 * (x - kernel_weights(x, patterns, gamma) @ patterns)


def kernel_hessian(x: torch.Tensor, patterns: torch.Tensor, gamma: float) -> torch.Tensor:
    """∇²E = 2(I − 2γ Cov_w(y)): (B, D, D)."""
    w = kernel_weights(x, patterns, gamma)
    return _identity_minus(weighted_covariance(w, patterns), 2 * gamma, 2.0)


# ------------------------------------------------------------- empirical (−log p_σ)


def beta_sigma(scale: float, sigma: float) -> float:
    """The empirical energy's inverse temperature β_σ = a/σ² (paper §C.2), a = scale.

    For VE (a = 1) and patterns of one norm, E_σ = β_σ · E_DenseAM(β = β_σ) + const, so
    ``dense_am_energy(x, y, beta_sigma(1, σ))`` is −log p_σ up to that scale and shift.
    """
    if not sigma > 0:
        raise UserError(f"sigma must be positive, got {sigma}")
    return scale / sigma**2


def kernel_gamma(sigma: float) -> float:
    """The kernel's γ = 1/(2σ²) at VE noise level σ (eq. 13's inverse temperature β)."""
    if not sigma > 0:
        raise UserError(f"sigma must be positive, got {sigma}")
    return 1.0 / (2.0 * sigma**2)


def empirical_energy(x: torch.Tensor, patterns: torch.Tensor, sigma: float,
                     scale: float = 1.0) -> torch.Tensor:
    """−log p_σ(x) with p_σ = (1/N) Σ N(x; a y_i, σ² I), all constants included. (B,)."""
    n, d = patterns.shape
    logits = _kernel_logits64(x, scale * patterns, kernel_gamma(sigma))
    const = math.log(n) + 0.5 * d * math.log(2 * math.pi * sigma**2)
    return (const - torch.logsumexp(logits, dim=-1)).to(x.dtype)


def empirical_grad(x: torch.Tensor, patterns: torch.Tensor, sigma: float,
                   scale: float = 1.0) -> torch.Tensor:
    """∇E_σ = (x − a Σ_i w_i y_i)/σ² = −score: (B, D)."""
    return (x - empirical_denoise(x, patterns, sigma, scale)) / sigma**2


def empirical_hessian(x: torch.Tensor, patterns: torch.Tensor, sigma: float,
                      scale: float = 1.0) -> torch.Tensor:
    """∇²E_σ = (I − Cov_w(a y)/σ²)/σ²: (B, D, D)."""
    w = kernel_weights(x, scale * patterns, kernel_gamma(sigma))
    cov = weighted_covariance(w, scale * patterns)
    return _identity_minus(cov, 1 / sigma**2, 1 / sigma**2)


def empirical_denoise(x: torch.Tensor, patterns: torch.Tensor, sigma: float | torch.Tensor,
                      scale: float = 1.0, memory_budget: int | None = None) -> torch.Tensor:
    """The exact posterior mean D(x, σ) = Σ_i softmax_i(−‖x − a y_i‖²/(2σ²)) · a y_i: (B, D).

    The one exact denoiser of memgen (``memgen.diffusion.denoisers.EmpiricalDenoiser`` is
    this function on samples of any shape). x: (B, D) and patterns: (N, D) of one dtype;
    sigma: a positive number (γ = :func:`kernel_gamma`, a Python float), or a (B,) tensor
    of per-row levels (γ = 1/(2σ²) formed in the tensor's dtype); a = scale.
    memory_budget: bytes per block of queries, x.element_size() · N each, so blocks of
    ⌊budget / (x.element_size() · N)⌋ ≥ 1 rows; None: all rows in one block. (Blocks
    agree with one block to rounding, not always to the bit: the GEMM sees other shapes.)
    """
    scaled = patterns if scale == 1 else scale * patterns  # 1·y = y to the bit: no copy
    gamma = (1.0 / (2.0 * sigma.square()) if isinstance(sigma, torch.Tensor)
             else kernel_gamma(sigma))
    if memory_budget is None:
        return kernel_weights(x, scaled, gamma) @ scaled
    step = max(1, memory_budget // (x.element_size() * len(scaled)))
    per_row = isinstance(gamma, torch.Tensor)
    return torch.cat([kernel_weights(x[i:i + step], scaled, gamma[i:i + step] if per_row
                                     else gamma) @ scaled for i in range(0, len(x), step)])


# ---------------------------------------------------------------- unit-circle limit


def circle_energy(R: torch.Tensor, gamma: float) -> torch.Tensor:
    """R² + 1 − (1/γ) log I0(2γR): the uniform unit circle's kernel energy (eq. 13 limit),
    γ = gamma as in :func:`kernel_energy`.

    Uses the exponentially scaled Bessel function, log I0(z) = log i0e(z) + z, so that
    large γR does not overflow.
    """
    z = 2 * gamma * R
    return R.square() + 1 - (torch.log(torch.special.i0e(z)) + z.abs()) / gamma


def circle_radial_score(R: torch.Tensor, gamma: float) -> torch.Tensor:
    """−dE/dR = 2(I1(2γR)/I0(2γR) − R), the radial pull towards the circle.

    (The public reference code's docstring flips this sign; this one is −∂E/∂R.)
    """
    z = 2 * gamma * R
    return 2 * (torch.special.i1e(z) / torch.special.i0e(z) - R)


def circle_score(points: torch.Tensor, gamma: float) -> torch.Tensor:
    """−∇E at points (B, 2) of the plane, E = :func:`circle_energy` of R = ‖x‖: the radial
    score times x/R, R clamped at 1e-12 (the field is 0 at the origin). (B, 2)."""
    r = points.norm(dim=1).clamp_min(1e-12)
    return (circle_radial_score(r, gamma) / r)[:, None] * points


def circle_ring_radius(gamma: float) -> float:
    """R* ≥ 0 where the continuum radial score 2(I1/I0(2γR) − R) vanishes: the radius of
    the ring of minima of :func:`circle_energy`, by 80 bisection steps on [1e-9, 1].

    The score is positive below R* and negative above it (I1/I0 is concave), and at most
    2(1 − R) < 0 beyond R = 1, so R* < 1. For γ ≤ 1, I1/I0(2γR) ≤ γR ≤ R: the only minimum
    is the origin and R* = 0.
    """
    lo, hi = 1e-9, 1.0

    def f(r):
        return float(circle_radial_score(torch.tensor(r, dtype=torch.float64), gamma))

    if f(lo) <= 0:  # γR small: I1/I0 ≈ γR < R for γ < 1: the minimum is the origin
        return 0.0
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) > 0 else (lo, mid)
    return (lo + hi) / 2


# -------------------------------------------------------------------------- helpers


def weighted_covariance(w: torch.Tensor, patterns: torch.Tensor) -> torch.Tensor:
    """Cov_w(y) = Σ w_i y_i y_iᵀ − m mᵀ with m = Σ w_i y_i, per row of w: (B, D, D).

    Computed on the patterns centred on their mean (Cov_w is shift-invariant), which
    keeps Σ w_i y_i y_iᵀ and m mᵀ from cancelling for data far from the origin.
    """
    patterns = patterns - patterns.mean(0)
    mean = w @ patterns  # (B, D)
    second = torch.einsum("bn,nd,ne->bde", w, patterns, patterns)
    return second - mean.unsqueeze(2) * mean.unsqueeze(1)


def _softmax(logits64: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Row softmax of float64 logits, returned in dtype.

    Below float64 the logits are shifted by their row maximum in float64 and normalised in
    float32: t = L − max L ≤ 0 rounds with relative error u, so a weight e^t is off by at
    most u·|t|·e^t ≤ u/e absolutely, at float32 speed.
    """
    if dtype == torch.float64:
        return torch.softmax(logits64, dim=-1)
    top = logits64.detach().amax(dim=-1, keepdim=True)
    shifted = logits64 - top if logits64.requires_grad else logits64.sub_(top)
    return torch.softmax(shifted.float(), dim=-1).to(dtype)


def _identity_minus(cov: torch.Tensor, kappa: float, c: float) -> torch.Tensor:
    """c (I − κ cov), batched."""
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
    return c * (eye - kappa * cov)
