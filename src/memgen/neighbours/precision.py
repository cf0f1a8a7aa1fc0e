"""The precision model of every screen: centring, and the rigorous bound on its error.

A screen ranks references by ‖q̃‖² + ‖r̃‖² − 2q̃ᵀr̃ in a low precision (float32 or
bfloat16), which cancels badly far from the origin. Both sets are therefore shifted by
the same float64 center (the reference mean, :func:`mean_center`) and rounded once to the
screen's precision (:func:`centred`, :func:`centre_into`), which keeps ‖q̃‖² and ‖r̃‖² small;
:func:`screen_error_bound` is then a rigorous bound γ on |screened − exact| squared
distance, which certifies the screens of :mod:`memgen.neighbours.exact`, the bfloat16
pre-screen, faiss and the energies' :func:`~memgen.neighbours.pairwise.pairwise_sq_dist`.
"""

from __future__ import annotations

import torch

CENTRE_ROWS = 8192  # rows per block when centring or taking norms in float64


def unit_roundoff(dtype: torch.dtype) -> float:
    """Unit roundoff of a matmul in dtype, honouring reduced-precision float32 matmul modes."""
    if dtype == torch.float64:
        return 2.0**-53
    precision = torch.get_float32_matmul_precision()
    return {"highest": 2.0**-24, "high": 2.0**-11}.get(precision, 2.0**-8)


def screen_error_bound(q_sq: torch.Tensor, r_sq_max, d: int, u: float) -> torch.Tensor:
    """γ (n,): a rigorous bound on |screened − exact| squared distance of a centred screen.

    q_sq: (n,) float64 ‖q̃‖² of the centred, rounded queries; r_sq_max: an upper bound on
    ‖r̃‖² over the references; d: dimension; u: unit roundoff of the screen
    (:func:`unit_roundoff`). Valid for every screen in use, all in the screen's precision:
    :class:`~memgen.neighbours.screen.Screen`'s s + ‖q̃‖² with s = [q̃, 1]·[−2r̃, fl(‖r̃‖²)]
    (one GEMM of d + 1 terms), the energies' ‖r̃‖² − 2q̃ᵀr̃ + ‖q̃‖² (one addmm) and faiss's
    ‖q̃‖² + ‖r̃‖² − 2q̃ᵀr̃ (or Σ(q̃ − r̃)²). With Q = ‖q̃‖², R = ‖r̃‖² and 2Σ|q̃_i r̃_i| ≤ Q + R, the error is at most, to
    first order in u:
      4u(Q + R)      rounding of the centred coordinates: q̃ = fl(q − c) has relative error
                     ≤ u + 2⁻⁵³ per coordinate (:func:`centred`), for q and r alike, so
                     ‖q̃ − r̃‖² is within this of ‖q − r‖²;
      (d + 3)u(Q + R) each squared norm in the screen's precision (a length-d sum in any
                     order, γ_d ≤ d·u/(1 − d·u), and up to three roundings: a square root,
                     its square and a cast);
      (d + 1)u(Q + R) the dot product with its d + 1 terms, the norm among them (two-term
                     forms: d + 2 roundings in all).
    That is (3d + 10)u(Q + R) with room to spare; the factor 1/(1 − (d + 4)u) covers the
    second-order terms and (4d + 16)·2⁻⁵³(Q + R) the float64 parts: the refined distances
    (relative error ≤ (d + 1)·2⁻⁵³ of a value ≤ 2(Q + R)), ‖q̃‖² and the threshold
    arithmetic. The bound is infinite when (d + 4)u ≥ ½, where no screen of that precision
    can certify.
    """
    if (d + 4) * u >= 0.5:
        return torch.full_like(q_sq, float("inf"))
    rate = (3 * d + 10) * u / (1 - (d + 4) * u) + (4 * d + 16) * 2.0**-53
    return rate * (q_sq + r_sq_max)


def centred(x: torch.Tensor, center: torch.Tensor, dtype: torch.dtype = torch.float32
            ) -> torch.Tensor:
    """x − center rounded once to dtype: (rows, d), each coordinate within relative
    u + 2⁻⁵³ of the exact difference, as :func:`centre_into` computes it; differentiable."""
    if x.dtype == dtype and _representable(center, dtype):
        return x - center.to(dtype)
    blocks = [(x[i:i + CENTRE_ROWS].double() - center).to(dtype)
              for i in range(0, len(x), CENTRE_ROWS)]
    return torch.cat(blocks) if blocks else x.new_empty(x.shape, dtype=dtype)


def centre_into(out: torch.Tensor, x: torch.Tensor, center: torch.Tensor, scale: float = 1.0
                ) -> None:
    """out ← scale·(x − center), rounded once to out's dtype (scale a power of two).

    Every set compared must be shifted by the same float64 center: a center rounded to
    the data's precision would move one set against the other. When x is already in out's
    dtype and the center is representable in it (:func:`mean_center` makes it so), one
    correctly rounded operation in that dtype does it, fl(scale·x − scale·c), the
    products being exact; otherwise the difference is taken in float64, in row blocks, so
    the float64 copy of a large set never exists at once.
    """
    if x.dtype == out.dtype and _representable(center, out.dtype):
        torch.add(center.to(out.dtype) * -scale, x, alpha=scale, out=out)
        return
    for i in range(0, len(x), CENTRE_ROWS):
        block = (x[i:i + CENTRE_ROWS].double() - center).mul_(scale)
        out[i:i + CENTRE_ROWS] = block


def _representable(center: torch.Tensor, dtype: torch.dtype) -> bool:
    return torch.equal(center.to(dtype).double(), center.double())


def mean_center(ref: torch.Tensor) -> torch.Tensor:
    """(d,) float64 center of ref: its mean, rounded to ref's precision when that is float32
    (so that :func:`centred` can centre float32 data by one float32 subtraction)."""
    if ref.dtype == torch.float32:
        return ref.mean(dim=0).double()
    return ref.mean(dim=0, dtype=torch.float64)


def sq_norms(x: torch.Tensor) -> torch.Tensor:
    """(rows,) float64 squared norms, in row blocks."""
    blocks = [x[i:i + CENTRE_ROWS].double().square().sum(1)
              for i in range(0, len(x), CENTRE_ROWS)]
    return torch.cat(blocks) if blocks else x.new_zeros(0, dtype=torch.float64)
