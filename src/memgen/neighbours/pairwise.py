"""All pairwise squared distances, float64-exact wherever a softmax weight can see them.

The energies (:mod:`memgen.memory.energy`) need every ‖x_b − y_i‖², not the k nearest:
:func:`pairwise_sq_dist` centres both sets on y's mean as the kNN screen does, screens in
float32 and recomputes in float64 the entries that matter.
"""

from __future__ import annotations

import torch

from memgen.errors import UserError
from memgen.neighbours.precision import centred, screen_error_bound, sq_norms, unit_roundoff

_SCREEN_MIN_DIM = 32  # below this a float64 GEMM costs no more than the float32 screen


def pairwise_sq_dist(x: torch.Tensor, y: torch.Tensor, within=None) -> torch.Tensor:
    """‖x_b − y_i‖²: (B, N) float64 for x (B, D), y (N, D), exact wherever it matters.

    Both sets are centred on y's mean first (as the kNN screen does), which keeps the
    expanded form ‖x‖² + ‖y‖² − 2xᵀy accurate for data far from the origin.
    within=None, float64 inputs or D < 32: one float64 GEMM of the centred data (error at
    most :func:`screen_error_bound` with u = 2⁻⁵³). within=W (a float, or (B,) tensor)
    with float32 or narrower inputs: a float32 GEMM screens every entry (error ≤ γ_b), and
    each entry screened within W + 2γ_b of its row's smallest is recomputed in float64 from
    direct differences (a whole row by float64 GEMM when over 1/32 of it is). Every entry
    within W of the row minimum is then float64-exact, and every other one exceeds it by
    more than W. Differentiable in x and y.
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or len(y) == 0:
        raise UserError(f"need x (B, D) and non-empty y (N, D), got shapes {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    if (within is None or torch.float64 in (x.dtype, y.dtype) or x.shape[1] < _SCREEN_MIN_DIM
            or len(x) == 0):
        return _sq_dist64(x, y, y.detach().mean(0, dtype=torch.float64))
    scores, x_sq, gamma, center = _screen_sq_dist(x, y)
    with torch.no_grad():
        limit = (scores.amin(1).double() + within + 2 * gamma).float()
        near = scores <= torch.nextafter(limit, torch.full_like(limit, float("inf"))).unsqueeze(1)
        heavy = near.sum(1) > max(len(y) // 32, 1)
    if 2 * int(heavy.sum()) > len(x):  # mostly busy rows: one float64 GEMM for all
        return _sq_dist64(x, y, center)
    d2 = scores.double().add_(x_sq.double().unsqueeze(1))  # (B, N) float64, screened
    if heavy.any():
        rows = torch.nonzero(heavy).squeeze(1)
        near[rows] = False
        d2.index_copy_(0, rows, _sq_dist64(x[rows], y, center))
    b, i = torch.nonzero(near, as_tuple=True)
    step = max(1, 2**22 // x.shape[1])
    for j in range(0, len(b), step):  # direct float64 differences, as the refinement's
        bj, ij = b[j:j + step], i[j:j + step]
        d2[bj, ij] = (x[bj].double() - y[ij].double()).square().sum(1)
    return d2


def _screen_sq_dist(x: torch.Tensor, y: torch.Tensor):
    """Float32 screen of centred data: scores ‖ỹ‖² − 2x̃ᵀỹ (B, N), ‖x̃‖² (B,), γ (B,) and
    the (float64) center.

    The center is y's mean rounded to float32, so float32 data are centred by one correctly
    rounded float32 subtraction: the guarantee of :func:`centred` at a fraction of its cost.
    Norms in float32 are covered by the bound's d·u(Q + R) term.
    """
    c32 = y.detach().mean(0, dtype=torch.float32)
    center = c32.double()
    xs, ys = (t - c32 if t.dtype == torch.float32 else centred(t, center) for t in (x, y))
    x_sq, y_sq = torch.linalg.vecdot(xs, xs), torch.linalg.vecdot(ys, ys)
    scores = torch.addmm(y_sq, xs, ys.T, alpha=-2.0)
    gamma = screen_error_bound(x_sq.detach().double(), float(y_sq.detach().max()), x.shape[1],
                               unit_roundoff(torch.float32))
    return scores, x_sq, gamma, center


def _sq_dist64(x: torch.Tensor, y: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """(B, N) float64 ‖x − y‖² by one float64 GEMM of the data centred on center."""
    xs, ys = centred(x, center, torch.float64), centred(y, center, torch.float64)
    d2 = torch.addmm(sq_norms(ys), xs, ys.T, alpha=-2.0).add_(sq_norms(xs).unsqueeze(1))
    return d2.clamp_min(0) if d2.requires_grad else d2.clamp_min_(0)
