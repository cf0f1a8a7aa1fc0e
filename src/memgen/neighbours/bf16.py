"""The bfloat16 pre-screen: a lower-bound score per pair from one bfloat16 GEMM.

Where the CPU multiplies bfloat16 in hardware (Intel AMX) and the problem is large, this
screen comes before the float32 one (:func:`use_bf16`): the float32 screen's rows rounded
to bfloat16 with two more columns that make every score a rigorous per-pair lower bound
(:class:`Bf16Screen`), one bfloat16 GEMM at ~9× the float32 rate, its 32 best candidates a
row refined where they may be among the k best, and the row certified against the lower
bound of the last (:func:`bf16_pass`); the rows this leaves open go through the float32
screen. The answer is the same either way; the bfloat16 rows add half the float32 screen's
memory (2 bytes a coordinate of the references).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from memgen.neighbours.precision import screen_error_bound
from memgen.neighbours.refine import refine_open, refine_widths
from memgen.neighbours.screen import Screen, screen_candidates

_BF16_CAND = 32  # candidates a row keeps from the bfloat16 screen
_BF16_MIN_DIM = 256  # below this its error bound separates too few rows to pay
_BF16_MIN_WORK = 10**10  # n·m·d below which the float32 screen is as fast
_BF16_U = 2.0**-8  # unit roundoff of bfloat16
# κ: the per-pair allowance for rounding the GEMM's inputs to bfloat16 (Bf16Screen), 2(2u + u²)
# for the products, raised by (1 + 8u) for the rounding of its own two factors
_BF16_KAPPA = 2 * (2 * _BF16_U + _BF16_U**2) * (1 + 8 * _BF16_U)


def use_bf16(n: int, m: int, d: int, device: torch.device, k: int,
             forced: bool | None = None) -> bool:
    """Whether knn_search runs the bfloat16 pre-screen: where forced (its ``bf16_screen``
    argument) is True, never where it is False, and for None where the CPU multiplies
    bfloat16 in hardware (AMX) and the problem is large enough. Never where a row keeps
    no more candidates than k, or every reference is one."""
    if forced is not None:
        return forced and m > _BF16_CAND and k < _BF16_CAND
    return (device.type == "cpu" and d >= _BF16_MIN_DIM and n * m * d >= _BF16_MIN_WORK
            and m > _BF16_CAND and k < _BF16_CAND and _amx_bf16())


@functools.lru_cache(maxsize=1)
def _amx_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (Intel AMX), where a
    bfloat16 GEMM runs ~9× the float32 rate; elsewhere it is emulated, and slower."""
    try:
        with open("/proc/cpuinfo") as f:
            return " amx_bf16" in f.read()
    except OSError:
        return False


@dataclass(frozen=True)
class Bf16Screen:
    """The reference side of the bfloat16 pre-screen: rows [−2r̃, fl(R(1 − 2u)), ‖r̃‖] in
    bfloat16, from a float32 :class:`Screen` (R = its ‖r̃‖², u = 2⁻⁸). With query rows
    [q̃, 1, −κ‖q̃‖] (:func:`bf16_pass`) one GEMM gives, for every pair, a *lower bound*
    score L whose exact value never exceeds s = ‖r̃‖² − 2q̃ᵀr̃ by more than the float32
    parts and L's own rounding (:meth:`lower`): the norm column is rounded down, and the
    last column subtracts κ‖q̃‖‖r̃‖, which covers rounding the other inputs to bfloat16 —
    each product 2q̃ᵢr̃ᵢ errs by ≤ (2u + u²)|2q̃ᵢr̃ᵢ|, in all ≤ (2u + u²)·2‖q̃‖‖r̃‖ (Cauchy–
    Schwarz). A per-pair allowance: for a query, neighbours of similar norm get about
    half the allowance that ‖q̃‖² + max‖r̃‖² would give them (Fashion-MNIST: 516 against
    1,177). Products of bfloat16 numbers are exact in float32, where oneDNN sums them."""

    rows: torch.Tensor  # (m, d + 2) bfloat16
    r_sq: torch.Tensor  # (m,) float32 ‖r̃‖² of the float32 screen
    r_sq_max: float
    d: int

    @classmethod
    def of(cls, screen: Screen) -> "Bf16Screen":
        m, d = screen.rows.shape[0], screen.rows.shape[1] - 1
        rows = torch.empty(m, d + 2, dtype=torch.bfloat16, device=screen.rows.device)
        rows[:, :d] = screen.rows[:, :d]
        r_sq = screen.rows[:, d]
        rows[:, d] = _round_down_bf16(r_sq * (1 - 2 * _BF16_U))
        rows[:, d + 1] = r_sq.sqrt()
        return cls(rows=rows, r_sq=r_sq, r_sq_max=screen.r_sq_max, d=d)

    def queries(self, q_rows: torch.Tensor, q_sq: torch.Tensor) -> torch.Tensor:
        """Query rows [q̃, 1, −κ‖q̃‖] (b, d + 2) in bfloat16 from the float32 screen's."""
        out = torch.empty(len(q_rows), self.d + 2, dtype=torch.bfloat16, device=q_rows.device)
        out[:, :self.d + 1] = q_rows
        out[:, self.d + 1] = -_BF16_KAPPA * q_sq.sqrt()
        return out

    def slack(self, q_sq: torch.Tensor) -> torch.Tensor:
        """γ' (b,): the float32 parts (centring, norms: :func:`screen_error_bound`, raised
        1 %) and the float32 sum of the GEMM's d + 2 terms, each ≤ 2(Q + R) in size."""
        gamma = screen_error_bound(q_sq, self.r_sq_max, self.d, 2.0**-24)
        return 1.01 * gamma + 2 * (self.d + 2) * 2.0**-24 * (q_sq + self.r_sq_max) * 1.1

    def lower(self, value: torch.Tensor, slack: torch.Tensor) -> torch.Tensor:
        """A lower bound on s from a bfloat16 score (float64, rows × candidates): the score,
        less γ' and the bfloat16 rounding of the result, u/(1 − u)|value|."""
        return value - slack.unsqueeze(1) - _BF16_U / (1 - _BF16_U) * value.abs()

    def width(self, value: torch.Tensor, slack: torch.Tensor, q_sq: torch.Tensor,
              idx: torch.Tensor) -> torch.Tensor:
        """An upper bound on s − lower (rows × candidates): what L subtracted and what its
        roundings may have taken, κ(1 + 3u)‖q̃‖‖r̃‖ + 2(2u + u²)‖q̃‖‖r̃‖ + 3uR + 2γ' +
        2u/(1 − u)|value|, raised 1 % for the float32 norms it is computed from."""
        u = _BF16_U
        r_sq = self.r_sq[idx].double()
        pair = (q_sq.unsqueeze(1) * r_sq).sqrt()
        return 1.01 * ((_BF16_KAPPA * (1 + 3 * u) + 2 * (2 * u + u * u)) * pair
                       + 3 * u * r_sq + 2 * slack.unsqueeze(1) + 2 * u / (1 - u) * value.abs())


def _round_down_bf16(x: torch.Tensor) -> torch.Tensor:
    """bfloat16 values ≤ x (x ≥ 0 float32): rounded to nearest, then one step down (the
    next smaller bfloat16, its bits less one) where that went up."""
    y = x.bfloat16()
    down = (y.view(torch.int16) - 1).view(torch.bfloat16)
    return torch.where(y.float() > x, down, y)


def bf16_pass(q, ref, screen: Screen, fast: Bf16Screen, own, k: int, r_block: int,
              tau=None):
    """The bfloat16 pre-screen of a query block: the _BF16_CAND smallest lower-bound scores
    of each row (:class:`Bf16Screen`), the candidates that may be among the k best refined
    in float64 (those whose lower bound is below the k-th smallest upper bound, and below
    the row's squared bound tau), and each row certified where its k-th refined distance,
    or its bound, lies below the lower bound of the last candidate, which bounds every
    reference left out. A row with no such candidate is not refined ((inf, −1)). Rows not
    certified (ok False) go to the float32 screen."""
    q_rows, q_sq = screen.queries(q)
    cand_val, cand_idx = screen_candidates(fast.queries(q_rows, q_sq), fast.rows, _BF16_CAND,
                                           r_block, own)
    val, order = torch.sort(cand_val.double(), dim=1)
    idx = cand_idx.gather(1, order)
    slack = fast.slack(q_sq)
    lower = fast.lower(val, slack)  # ascending, as val
    upper = lower + fast.width(val, slack, q_sq, idx)
    kth_upper = torch.kthvalue(upper, k, dim=1).values
    may = lower <= kth_upper.unsqueeze(1)
    if tau is not None:
        may &= ~(lower + q_sq.unsqueeze(1) >= tau.unsqueeze(1))
    need = may.sum(dim=1)  # a prefix: lower ascends
    need[~torch.isfinite(lower).all(dim=1)] = val.shape[1]  # overflowed scores order nothing
    d2, ix = refine_open(None if tau is None else need > 0,
                         lambda r: refine_widths(q[r], ref, idx[r], need[r], k),
                         len(q), k, q.device)
    if _BF16_CAND >= ref.shape[0] - int(own is not None):  # every reference a candidate,
        return d2, ix, torch.isfinite(lower).all(dim=1)  # where overflow chose none
    floor = lower[:, -1] + q_sq  # no reference left out lies closer
    ok = d2[:, -1] < floor
    if tau is not None:  # every reference left out lies at or past the bound
        ok |= tau <= floor
    return d2, ix, ok
