"""Exact k-nearest-neighbour search under Euclidean distance.

The search runs in two passes, the way scikit-learn's brute-force engine bounds
its memory, but with an exactness guarantee that float32 GEMM alone lacks:

1. *Screen* (float32, GEMM-bound). For a block of queries Q and a block of
   references R the squared distances are ‖q‖² + ‖r‖² − 2 qᵀr. The ‖q‖² term
   does not change a row's ranking, so the block computes s = ‖r‖² − 2 qᵀr with
   one GEMM of the rows [q, 1] and [−2r, ‖r‖²] (:class:`Screen`) and keeps the
   ``c = k + margin`` smallest per row (a group-minimum pre-selection, then
   ``topk``), merged across reference blocks.
2. *Refine* (float64). The best candidates of every query are re-scored as
   ‖q − r‖² in float64 from direct differences and sorted by (distance, index);
   only k + 2 of them where the screen separates the rest by more than its error.

Where the CPU multiplies bfloat16 in hardware (Intel AMX) and the problem is large, a
bfloat16 screen comes first (``_bf16_pass``): the float32 screen's rows rounded to
bfloat16 with two more columns that make every score a rigorous per-pair lower bound
(:class:`Bf16Screen`), one bfloat16 GEMM at ~9× the float32 rate, its 32 best candidates a
row refined where they may be among the k best, and the row certified against the lower
bound of the last; the rows this leaves open go through the float32 screen. The answer
is the same either way; the bfloat16 rows add half the float32 screen's memory (2 bytes
a coordinate of the references).

The float32 screen can mis-order near-ties (cancellation in ‖q‖² + ‖r‖² − 2qᵀr),
so the result is *certified*: with T the largest screened value kept for a row
and γ a rigorous bound on the screening error, every discarded reference has
exact squared distance ≥ T − γ. If the k-th refined distance is below that, the
row is exact; rows that fail the check (rare) are recomputed by a float64 scan
over all references. Both sets are centred on the reference mean, rounded once
to the screen's precision, which makes ‖q‖² and ‖r‖² (and so γ) small; γ
(:func:`screen_error_bound`) covers the rounding of those centred coordinates. Ties
are broken by the smaller index. :func:`pairwise_sq_dist` serves the energies with the
same centring: float64-exact squared distances wherever a softmax weight can see them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from memgen.errors import UserError

DEFAULT_MEMORY_BUDGET = 512 * 2**20  # bytes for the (queries × references) score block
_R_BLOCK_MAX = 4096
_GROUP = 16  # columns per group in the group-minimum pre-selection of _smallest
_REFINE_ROWS = 32  # query rows per float64 refinement step (its temporaries fit in L2)
_REFINE_EXTRA = 2  # candidates re-scored beyond k where the screen separates them (_refine)
_CENTRE_ROWS = 8192  # rows per block when centring or taking norms in float64
_SCREEN_MIN_DIM = 32  # below this a float64 GEMM costs no more than the float32 screen
# The bfloat16 pre-screen (_bf16_pass): None = where the CPU multiplies bfloat16 in hardware
# (AMX) and the problem is large enough; True / False force it on or off (tests).
BF16_SCREEN: bool | None = None
_BF16_CAND = 32  # candidates a row keeps from the bfloat16 screen
_BF16_MIN_DIM = 256  # below this its error bound separates too few rows to pay
_BF16_MIN_WORK = 10**10  # n·m·d below which the float32 screen is as fast


@dataclass(frozen=True)
class KnnResult:
    """Neighbours of every query, ascending by distance (ties: smaller index).

    dist: (n, k) float64 Euclidean distances (not squared).
    idx:  (n, k) int64 indices into the reference set.
    n_fallback: rows that needed the float64 full scan to be certified exact.
    """

    dist: torch.Tensor
    idx: torch.Tensor
    n_fallback: int = 0


def knn(query, ref, k: int, exclude_self: bool = False, *, memory_budget: int | None = None,
        margin: int = 8, progress: bool = False):
    """Exact top-k Euclidean neighbours of each query row among the rows of ``ref``.

    query: (n, ...) array or tensor; ref: (m, ...) with the same trailing shape
    (flattened to vectors). ``exclude_self=True`` means query *is* ref (n == m)
    and drops the match of row i with reference i, by index, so duplicated points
    still find each other. Returns ``(dist, idx)``, each (n, k), as numpy arrays
    for numpy inputs and tensors (on the input's device) for tensor inputs.
    """
    as_numpy = not isinstance(query, torch.Tensor)
    result = knn_search(_as_tensor(query), _as_tensor(ref), k, exclude_self=exclude_self,
                        memory_budget=memory_budget, margin=margin, progress=progress)
    if as_numpy:
        return result.dist.cpu().numpy(), result.idx.cpu().numpy()
    return result.dist, result.idx


def knn_search(query: torch.Tensor, ref: torch.Tensor, k: int, *, exclude_self: bool = False,
               memory_budget: int | None = None, margin: int = 8, bound=None,
               progress: bool = False) -> KnnResult:
    """Tensor version of :func:`knn` returning a :class:`KnnResult`.

    bound: None, or (n,) distances beyond which query i needs no neighbour (a streamed
    search's running k-th, :func:`memgen.metrics.stream.stream_knn`). Every neighbour
    closer than bound[i] is then found as without it; the entries of a row past its bound
    may instead be (inf, −1), and a row's refinement is skipped where the screen proves
    every reference at least that far.
    """
    query, ref = _validate(query, ref, k, exclude_self)
    n, m = query.shape[0], ref.shape[0]
    tau = _squared_bounds(bound, n, query.shape[1], query.device)
    budget = _budget(memory_budget)
    screen = Screen.build(ref, torch.float32)
    n_cand = min(k + margin, m - int(exclude_self))
    q_block, r_block = _block_sizes(n, m, budget, itemsize=4)
    fast = Bf16Screen.of(screen) if _use_bf16(n, m, query.shape[1], query.device, k) \
        else None

    dist = torch.empty(n, k, dtype=torch.float64, device=query.device)
    idx = torch.empty(n, k, dtype=torch.int64, device=query.device)
    n_fallback = 0
    starts = range(0, n, q_block)
    for q0 in tqdm(starts, desc="kNN", unit="block", disable=not progress or len(starts) < 2):
        q, t = query[q0:q0 + q_block], None if tau is None else tau[q0:q0 + q_block]
        own = torch.arange(q0, q0 + q.shape[0], device=q.device) if exclude_self else None
        if fast is not None:
            d2, ix, ok = _bf16_pass(q, ref, screen, fast, own, k, r_block, t)
            if not ok.all():  # rows the bfloat16 bound leaves open: the float32 screen
                rows = torch.nonzero(~ok).squeeze(1)
                d2[rows], ix[rows], ok[rows] = _certified_pass(
                    q[rows], ref, screen, None if own is None else own[rows], k, n_cand,
                    r_block, None if t is None else t[rows])
        else:
            d2, ix, ok = _certified_pass(q, ref, screen, own, k, n_cand, r_block, t)
        if not ok.all():
            bad = torch.nonzero(~ok).squeeze(1)
            n_fallback += len(bad)
            d2[bad], ix[bad] = _fallback(q[bad], ref, screen.center,
                                         None if own is None else own[bad], k, margin, budget)
        dist[q0:q0 + q.shape[0]], idx[q0:q0 + q.shape[0]] = d2.sqrt(), ix
    return KnnResult(dist=dist, idx=idx, n_fallback=n_fallback)


@dataclass(frozen=True)
class Screen:
    """The reference side of a screen in one precision: centred references as GEMM rows.

    rows[j] = [−2r̃_j, fl(‖r̃_j‖²)], with r̃_j = ref_j − center rounded once to the screen's
    dtype (:func:`centred`), so that a query row [q̃, 1] (:meth:`queries`) gives the score
    s = ‖r̃‖² − 2q̃ᵀr̃ of every reference in one GEMM, with no pass to add the norms.
    r_sq_max bounds ‖r̃_j‖² from above (the computed maximum, raised by its rounding).
    """

    center: torch.Tensor  # (d,) float64
    rows: torch.Tensor  # (m, d + 1) in the screen's dtype
    r_sq_max: float

    @classmethod
    def build(cls, ref: torch.Tensor, dtype: torch.dtype, center: torch.Tensor | None = None
              ) -> "Screen":
        """The screen of ref (m, d); center defaults to ref's mean (:func:`mean_center`)."""
        center = mean_center(ref) if center is None else center
        m, d = ref.shape
        rows = torch.empty(m, d + 1, dtype=dtype, device=ref.device)
        for i in range(0, m, _CENTRE_ROWS):
            block = rows[i:i + _CENTRE_ROWS, :d]
            centre_into(block, ref[i:i + _CENTRE_ROWS], center, scale=-2.0)
            norm = torch.linalg.vector_norm(block, dim=1)  # 2‖r̃‖, exactly twice that of r̃
            rows[i:i + _CENTRE_ROWS, d] = norm.square_().mul_(0.25)
        u = _unit_roundoff(dtype)
        r_sq_max = float(rows[:, d].max()) * (1 + (d + 4) * u) if m else 0.0
        return cls(center=center, rows=rows, r_sq_max=r_sq_max)

    @property
    def unit_roundoff(self) -> float:
        return _unit_roundoff(self.rows.dtype)

    def queries(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Query rows [q̃, 1] (b, d + 1) in the screen's dtype and ‖q̃‖² (b,) in float64."""
        q_rows = torch.empty(len(q), q.shape[1] + 1, dtype=self.rows.dtype, device=q.device)
        centre_into(q_rows[:, :-1], q, self.center)
        q_rows[:, -1] = 1.0
        q_sq = torch.linalg.vector_norm(q_rows[:, :-1], dim=1, dtype=torch.float64).square_()
        return q_rows, q_sq

    def bound(self, q_sq: torch.Tensor) -> torch.Tensor:
        """γ (b,) for these queries (:func:`screen_error_bound`); inf where the screen's
        dtype could overflow."""
        d = self.rows.shape[1] - 1
        gamma = screen_error_bound(q_sq, self.r_sq_max, d, self.unit_roundoff)
        safe = torch.finfo(self.rows.dtype).max / 8
        return gamma.masked_fill(q_sq + self.r_sq_max >= safe, float("inf"))


def _certified_pass(q, ref, screen: Screen, own, k, n_cand, r_block, tau=None):
    """Screen centred data in the screen's precision, refine raw data in float64, certify
    each row: (d2 (b, k) float64 squared, idx (b, k), ok (b,) bool). tau (b,): squared
    bounds (:func:`_squared_bounds`); a row whose every candidate's screened lower bound
    reaches it is not refined ((inf, −1), and certified: the rest screen higher)."""
    q_rows, q_sq = screen.queries(q)
    gamma = screen.bound(q_sq)
    cand_val, cand_idx = _screen(q_rows, screen.rows, n_cand, r_block, own)
    # open unless proved at or past the bound (a NaN score, from overflow, proves nothing)
    open_ = None if tau is None else ~(cand_val.min(dim=1).values + q_sq - gamma >= tau)
    d2, ix = _refine_open(open_, lambda r: _refine(q[r], ref, cand_val[r], cand_idx[r], k,
                                                   2 * gamma[r]), len(q), k, q.device)
    if n_cand >= ref.shape[0] - int(own is not None):  # every reference a candidate,
        return d2, ix, torch.isfinite(cand_val).all(dim=1)  # where overflow chose none
    ok = _certified(cand_val, q_sq, gamma, d2[:, -1])
    if tau is not None:  # every reference left out screens at or past the bound
        ok |= tau <= cand_val.double().max(dim=1).values + q_sq - gamma
    return d2, ix, ok


def _squared_bounds(bound, n: int, d: int, device) -> torch.Tensor | None:
    """knn_search's bound as squared distances (n,) float64, raised so that a reference
    whose exact squared distance reaches one has a refined float64 distance above the
    bound's own refined value: refined sums of d squares err by ≤ (d + 2)·2⁻⁵³ of the
    exact value, and bound² by 3·2⁻⁵³ of the squared distance it was taken from."""
    if bound is None:
        return None
    bound = torch.as_tensor(bound, dtype=torch.float64, device=device)
    if bound.shape != (n,) or torch.isnan(bound).any() or (bound < 0).any():
        raise UserError(f"bound must be ({n},) non-negative distances")
    tau = bound.square() * (1 + (d + 8) * 2.0**-52)
    # a positive bound whose square underflows still admits the references at distance 0
    return torch.where(bound > 0, tau.clamp(min=torch.finfo(torch.float64).tiny), tau)


def _refine_open(open_, refine, b: int, k: int, device):
    """refine(rows) on the rows where open_ (b,) holds (all rows for None), (inf, −1) on
    the others: (d2 (b, k), idx (b, k))."""
    if open_ is None:
        return refine(slice(None))
    d2 = torch.full((b, k), float("inf"), dtype=torch.float64, device=device)
    ix = torch.full((b, k), -1, dtype=torch.int64, device=device)
    if open_.any():
        rows = torch.nonzero(open_).squeeze(1)
        d2[rows], ix[rows] = refine(rows)
    return d2, ix


def _use_bf16(n: int, m: int, d: int, device: torch.device, k: int) -> bool:
    """Whether knn_search runs the bfloat16 pre-screen (``BF16_SCREEN``)."""
    if BF16_SCREEN is not None:
        return BF16_SCREEN and m > _BF16_CAND and k < _BF16_CAND
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


_BF16_U = 2.0**-8  # unit roundoff of bfloat16
# κ: the per-pair allowance for rounding the GEMM's inputs to bfloat16 (Bf16Screen), 2(2u + u²)
# for the products, raised by (1 + 8u) for the rounding of its own two factors
_BF16_KAPPA = 2 * (2 * _BF16_U + _BF16_U**2) * (1 + 8 * _BF16_U)


@dataclass(frozen=True)
class Bf16Screen:
    """The reference side of the bfloat16 pre-screen: rows [−2r̃, fl(R(1 − 2u)), ‖r̃‖] in
    bfloat16, from a float32 :class:`Screen` (R = its ‖r̃‖², u = 2⁻⁸). With query rows
    [q̃, 1, −κ‖q̃‖] (:func:`_bf16_pass`) one GEMM gives, for every pair, a *lower bound*
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


def _bf16_pass(q, ref, screen: Screen, fast: Bf16Screen, own, k: int, r_block: int,
               tau=None):
    """The bfloat16 pre-screen of a query block: the _BF16_CAND smallest lower-bound scores
    of each row (:class:`Bf16Screen`), the candidates that may be among the k best refined
    in float64 (those whose lower bound is below the k-th smallest upper bound, and below
    the row's squared bound tau), and each row certified where its k-th refined distance,
    or its bound, lies below the lower bound of the last candidate, which bounds every
    reference left out. A row with no such candidate is not refined ((inf, −1)). Rows not
    certified (ok False) go to the float32 screen."""
    q_rows, q_sq = screen.queries(q)
    cand_val, cand_idx = _screen(fast.queries(q_rows, q_sq), fast.rows, _BF16_CAND, r_block,
                                 own)
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
    d2, ix = _refine_open(None if tau is None else need > 0,
                          lambda r: _refine_widths(q[r], ref, idx[r], need[r], k),
                          len(q), k, q.device)
    if _BF16_CAND >= ref.shape[0] - int(own is not None):  # every reference a candidate,
        return d2, ix, torch.isfinite(lower).all(dim=1)  # where overflow chose none
    floor = lower[:, -1] + q_sq  # no reference left out lies closer
    ok = d2[:, -1] < floor
    if tau is not None:  # every reference left out lies at or past the bound
        ok |= tau <= floor
    return d2, ix, ok


def _fallback(q, ref, center, own, k, margin, budget):
    """Rows the float32 screen could not certify: a float64 screen, then direct differences."""
    n_cand = min(max(4 * (k + margin), 64), ref.shape[0] - int(own is not None))
    screen = Screen.build(ref, torch.float64, center)
    _, r_block = _block_sizes(len(q), ref.shape[0], budget, itemsize=8)
    d2, ix, ok = _certified_pass(q, ref, screen, own, k, n_cand, r_block)
    if not ok.all():
        bad = torch.nonzero(~ok).squeeze(1)
        d2[bad], ix[bad] = _direct_scan(q[bad], ref, None if own is None else own[bad], k, budget)
    return d2, ix


def brute_force_knn(query, ref, k: int, exclude_self: bool = False):
    """Reference implementation: all float64 distances, then a stable sort. O(n·m) memory."""
    q = _as_tensor(query).reshape(len(query), -1).double()
    r = _as_tensor(ref).reshape(len(ref), -1).double()
    d2 = (q[:, None, :] - r[None, :, :]).square().sum(-1)
    if exclude_self:
        d2.fill_diagonal_(float("inf"))
    order = torch.sort(d2, dim=1, stable=True).indices[:, :k]
    return d2.gather(1, order).sqrt().numpy(), order.numpy()


def pairwise_sq_dist(x: torch.Tensor, y: torch.Tensor, within=None) -> torch.Tensor:
    """‖x_b − y_i‖²: (B, N) float64 for x (B, D), y (N, D), exact wherever it matters.

    Both sets are centred on y's mean first (as :func:`knn_search` does), which keeps the
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
    for j in range(0, len(b), step):  # direct float64 differences, as _refine computes them
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
                               _unit_roundoff(torch.float32))
    return scores, x_sq, gamma, center


def _sq_dist64(x: torch.Tensor, y: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """(B, N) float64 ‖x − y‖² by one float64 GEMM of the data centred on center."""
    xs, ys = centred(x, center, torch.float64), centred(y, center, torch.float64)
    d2 = torch.addmm(_sq_norms(ys), xs, ys.T, alpha=-2.0).add_(_sq_norms(xs).unsqueeze(1))
    return d2.clamp_min(0) if d2.requires_grad else d2.clamp_min_(0)


def _as_tensor(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    arr = np.asarray(x)
    if arr.dtype == object:
        raise UserError("object arrays are not supported; pass a numeric array")
    return torch.from_numpy(np.ascontiguousarray(arr))


def _validate(query: torch.Tensor, ref: torch.Tensor, k: int, exclude_self: bool):
    if query.ndim < 2 or ref.ndim < 2:
        raise UserError("query and ref must have a leading sample axis: shapes (n, d...)")
    if query.shape[1:] != ref.shape[1:]:
        raise UserError(f"query samples have shape {tuple(query.shape[1:])} but reference "
                         f"samples have shape {tuple(ref.shape[1:])}")
    if query.shape[0] == 0 or ref.shape[0] == 0:
        raise UserError("query and reference sets must not be empty")
    if query.device != ref.device:
        raise UserError(f"query is on {query.device} but ref is on {ref.device}")
    if exclude_self and query.shape[0] != ref.shape[0]:
        raise UserError("exclude_self=True needs query and ref to be the same set")
    available = ref.shape[0] - int(exclude_self)
    if k < 1:
        raise UserError(f"k={k}: ask for at least 1 neighbour")
    if k > available:
        raise UserError(f"k={k} neighbours requested but the reference set offers {available}")
    query, ref = query.reshape(query.shape[0], -1), ref.reshape(ref.shape[0], -1)
    if not (_all_finite(query) and _all_finite(ref)):
        raise UserError("query or reference contains NaN or Inf")
    return query, ref


def _all_finite(x: torch.Tensor) -> bool:
    """Whether x holds no NaN or Inf: its extremes are finite (NaN propagates through them)."""
    if x.numel() == 0:
        return True
    lo, hi = torch.aminmax(x)
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def _budget(memory_budget: int | None) -> int:
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else int(memory_budget)
    if budget <= 0:
        raise UserError("memory_budget must be a positive number of bytes")
    return budget


def _block_sizes(n: int, m: int, budget: int, itemsize: int) -> tuple[int, int]:
    """Query and reference block sizes whose score block fits the budget.

    Blocks of at most 2048 × 4096 (32 MiB in float32) keep the GEMM near its peak rate and
    the selection passes over the block cheap; larger ones cost more in page faults and
    cache misses than they save in loop overhead.
    """
    elements = max(budget // itemsize, 1)
    q_block = max(1, min(n, 2048, elements // min(m, _R_BLOCK_MAX)))
    r_block = max(1, min(m, _R_BLOCK_MAX, elements // q_block))
    if _GROUP <= r_block < m:  # whole groups, for the group-minimum selection
        r_block -= r_block % _GROUP
    return q_block, r_block


def _screen(q_rows: torch.Tensor, r_rows: torch.Tensor, n_cand: int, r_block: int,
            own: torch.Tensor | None):
    """The n_cand smallest scores ‖r̃‖² − 2q̃ᵀr̃ per query row, merged across reference blocks.

    q_rows (bq, d + 1), r_rows (m, d + 1): the GEMM rows of :class:`Screen`.
    own: (bq,) reference index of each query itself (excluded), or None.
    Returns (values, columns), each (bq, min(n_cand, m)), unsorted.
    """
    b, m = len(q_rows), len(r_rows)
    best_val = best_idx = None
    buffer = torch.empty(b * min(r_block, m), dtype=q_rows.dtype, device=q_rows.device)
    for r0 in range(0, m, r_block):
        r1 = min(r0 + r_block, m)
        c = min(n_cand, r1 - r0)
        scores = buffer[:b * (r1 - r0)].view(b, r1 - r0)  # (bq, br)
        minima = _scores(q_rows, r_rows[r0:r1], scores, grouped=_grouped(r1 - r0, c))
        if own is not None:
            _exclude(scores, minima, own - r0)
        if best_val is not None and best_val.shape[1] == n_cand and minima is not None:
            _merge_block(scores, minima, r0, best_val, best_idx)
            continue
        val, pos = _smallest(scores, minima, c)
        pos += r0
        if best_val is not None:
            val, pos = torch.cat([best_val, val], 1), torch.cat([best_idx, pos], 1)
            if val.shape[1] > n_cand:
                val, sel = torch.topk(val, n_cand, dim=1, largest=False, sorted=False)
                pos = pos.gather(1, sel)
        best_val, best_idx = val, pos
    return best_val, best_idx


def _grouped(width: int, c: int) -> bool:
    """Whether a block of width columns suits the group-minimum selection of c entries."""
    return width >= 4 * c * _GROUP and width % _GROUP == 0


def _scores(q_rows: torch.Tensor, r_rows: torch.Tensor, out: torch.Tensor, grouped: bool):
    """out ← q_rows r_rowsᵀ, and the group minima (bq, width/_GROUP) when grouped (else None).

    One GEMM call for the whole block: at 2048 query rows it runs 4 % faster than in
    512-row slices, and more than that is lost by slicing than the minima gain from
    reading slices still in cache (measured on Fashion-MNIST and random data; see
    docs/BENCHMARKS.md). Group j of a row holds columns j, j + width/_GROUP, …: its
    minimum is an elementwise minimum of _GROUP contiguous slices.
    """
    torch.mm(q_rows, r_rows.T, out=out)
    if not grouped:
        return None
    return torch.amin(out.view(len(out), _GROUP, -1), dim=1)


def _exclude(scores: torch.Tensor, minima: torch.Tensor | None, own: torch.Tensor) -> None:
    """Set each query's own score to inf (own: (bq,) columns, those outside the block ignored)
    and retake the group minima of the rows it touched."""
    rows = torch.nonzero((own >= 0) & (own < scores.shape[1])).squeeze(1)
    if len(rows) == 0:
        return
    scores[rows, own[rows]] = float("inf")
    if minima is not None:
        minima[rows] = scores[rows].view(len(rows), _GROUP, -1).amin(dim=1)


def _smallest(scores: torch.Tensor, minima: torch.Tensor | None, c: int):
    """The c smallest entries per row and their columns (unsorted).

    Group-minimum pre-selection, given the minima of :func:`_scores` (None: a plain topk):
    the c smallest entries lie in the c groups with the smallest minima (each sits in a
    group whose minimum is no larger, and at most c such groups exist), so topk runs on the
    width/_GROUP minima and then on c·_GROUP gathered entries. Every entry left out is ≥ the
    c-th group minimum ≥ the c-th smallest entry, as certification needs.
    """
    if minima is None:
        return torch.topk(scores, c, dim=1, largest=False, sorted=False)
    groups = torch.topk(minima, c, dim=1, largest=False, sorted=False).indices
    cols = _group_columns(groups, minima.shape[1]).flatten(1)
    val, sel = torch.topk(scores.gather(1, cols), c, dim=1, largest=False, sorted=False)
    return val, cols.gather(1, sel)


def _group_columns(groups: torch.Tensor, stride: int) -> torch.Tensor:
    """(..., _GROUP) the columns of each group in a block of _GROUP · stride columns."""
    return groups.unsqueeze(-1) + stride * torch.arange(_GROUP, device=groups.device)


def _merge_block(scores: torch.Tensor, minima: torch.Tensor, r0: int, best_val: torch.Tensor,
                 best_idx: torch.Tensor) -> None:
    """Merge a score block into the running c smallest per row (best_*, (bq, c), in place).

    Only entries below a row's running threshold (its largest kept value) can enter, and
    each lies in a group whose minimum is below it: those groups are gathered, their
    entries below the threshold kept, and each row that has some merges them with its
    kept values by one small topk.
    """
    b, w = scores.shape
    c, stride = best_val.shape[1], minima.shape[1]
    threshold = best_val.amax(dim=1)
    row, group = torch.nonzero(minima < threshold.unsqueeze(1), as_tuple=True)
    if len(row) == 0:
        return
    cols = _group_columns(group, stride)  # (hits, _GROUP)
    val = scores.view(-1)[(row * w).unsqueeze(1) + cols]
    hit, member = torch.nonzero(val < threshold[row].unsqueeze(1), as_tuple=True)
    row, val, col = row[hit], val[hit, member], cols[hit, member] + r0  # row-major order
    rows, count = torch.unique_consecutive(row, return_counts=True)
    start = torch.cumsum(count, 0) - count
    slot = torch.arange(len(row), device=row.device) - torch.repeat_interleave(start, count)
    width = int(count.max())
    new_val = val.new_full((len(rows), width), float("inf"))
    new_idx = col.new_zeros((len(rows), width))
    local = torch.repeat_interleave(torch.arange(len(rows), device=row.device), count)
    new_val[local, slot], new_idx[local, slot] = val, col
    val, sel = torch.topk(torch.cat([best_val[rows], new_val], 1), c, dim=1, largest=False,
                          sorted=False)
    best_val[rows] = val
    best_idx[rows] = torch.cat([best_idx[rows], new_idx], 1).gather(1, sel)


def _refine(q: torch.Tensor, ref: torch.Tensor, cand_val: torch.Tensor, cand_idx: torch.Tensor,
            k: int, slack: torch.Tensor):
    """The k best candidates by float64 distance of the raw data, ordered by (distance, index).

    A row re-scores its candidates screened within slack (b,) = 2γ of its k-th, and at
    least k + _REFINE_EXTRA of them: every candidate left out is then screened more than
    2γ above k candidates, so its exact distance exceeds theirs. Rows are re-scored in
    groups of one width (rounded up to a multiple of 4), so a row with many near-ties
    costs no more than it needs.
    """
    val, order = torch.sort(cand_val, dim=1)
    idx = cand_idx.gather(1, order)
    val = val.double()
    near = (val <= val[:, k - 1:k] + slack.unsqueeze(1)).sum(dim=1)
    near[~torch.isfinite(val).all(dim=1)] = val.shape[1]  # overflowed scores order nothing
    return _refine_widths(q, ref, idx, near, k)


def _refine_widths(q: torch.Tensor, ref: torch.Tensor, idx: torch.Tensor, need: torch.Tensor,
                   k: int):
    """The k best by float64 distance of the first need[i] candidates idx[i] of each row
    (at least k + _REFINE_EXTRA of them), ordered by (distance, index); rows grouped by
    width, rounded up to a multiple of 4, so a row with many near-ties costs only what it
    needs."""
    c = idx.shape[1]
    least = min(c, k + _REFINE_EXTRA)
    width = torch.where(need <= least, least, -(-need // 4) * 4).clamp_(max=c)
    d2 = torch.empty(len(q), k, dtype=torch.float64, device=q.device)
    ix = torch.empty(len(q), k, dtype=torch.int64, device=q.device)
    for w in torch.unique(width).tolist():
        rows = torch.nonzero(width == w).squeeze(1)
        d2[rows], ix[rows] = take_sorted(candidate_sq_dist(q[rows], ref, idx[rows, :w]),
                                         idx[rows, :w], k)
    return d2, ix


def candidate_sq_dist(q: torch.Tensor, ref: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(n, c) float64 ‖q_i − ref[idx[i, j]]‖² from direct differences, in row chunks whose
    temporaries are allocated once (a fresh pair each chunk fragments the heap: +260 MiB of
    peak memory in a streamed search)."""
    n, c = idx.shape
    out = torch.empty(n, c, dtype=torch.float64, device=ref.device)
    rows = min(n, _REFINE_ROWS)
    gathered = ref.new_empty(rows * c, ref.shape[1])
    diff = torch.empty(rows, c, ref.shape[1], dtype=torch.float64, device=ref.device)
    for i in range(0, n, _REFINE_ROWS):
        b = min(_REFINE_ROWS, n - i)
        torch.index_select(ref, 0, idx[i:i + b].reshape(-1), out=gathered[:b * c])
        block = diff[:b]
        block.copy_(gathered[:b * c].view(b, c, -1))
        block.sub_(q[i:i + b].double().unsqueeze(1))
        torch.sum(block.square_(), -1, out=out[i:i + b])
    return out


def take_sorted(d: torch.Tensor, idx: torch.Tensor, k: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The k smallest candidates per row, ordered by (distance, index).

    d, idx: (n, c) distances and their reference indices; returns (n, min(k, c)) each.
    A stable sort by index, then a stable sort by distance, so ties go to the smaller index.
    Merging two top-k lists is this on their concatenation.
    """
    by_idx = torch.sort(idx, dim=1, stable=True).indices
    d, idx = d.gather(1, by_idx), idx.gather(1, by_idx)
    by_d = torch.sort(d, dim=1, stable=True).indices[:, :k]
    return d.gather(1, by_d), idx.gather(1, by_d)


def _unit_roundoff(dtype: torch.dtype) -> float:
    """Unit roundoff of a matmul in dtype, honouring reduced-precision float32 matmul modes."""
    if dtype == torch.float64:
        return 2.0**-53
    precision = torch.get_float32_matmul_precision()
    return {"highest": 2.0**-24, "high": 2.0**-11}.get(precision, 2.0**-8)


def _certified(cand_val, q_sq, gamma, kth_d2) -> torch.Tensor:
    """True where no discarded reference can beat the k-th refined distance.

    A discarded reference j has screened score s_j ≥ T (the largest kept score), and
    |s_j + ‖q̃‖² − ‖q − r_j‖²| ≤ γ (:func:`screen_error_bound`), so the row is exact when
    kth_d2 < T + ‖q̃‖² − γ (strict, so that ties with discarded points cannot hide).
    """
    threshold = cand_val.double().max(dim=1).values + q_sq - gamma
    return kth_d2 < threshold


def screen_error_bound(q_sq: torch.Tensor, r_sq_max, d: int, u: float) -> torch.Tensor:
    """γ (n,): a rigorous bound on |screened − exact| squared distance of a centred screen.

    q_sq: (n,) float64 ‖q̃‖² of the centred, rounded queries; r_sq_max: an upper bound on
    ‖r̃‖² over the references; d: dimension; u: unit roundoff of the screen
    (:func:`_unit_roundoff`). Valid for every screen in use, all in the screen's precision:
    :class:`Screen`'s s + ‖q̃‖² with s = [q̃, 1]·[−2r̃, fl(‖r̃‖²)] (one GEMM of d + 1 terms),
    the energies' ‖r̃‖² − 2q̃ᵀr̃ + ‖q̃‖² (one addmm) and faiss's ‖q̃‖² + ‖r̃‖² − 2q̃ᵀr̃ (or
    Σ(q̃ − r̃)²). With Q = ‖q̃‖², R = ‖r̃‖² and 2Σ|q̃_i r̃_i| ≤ Q + R, the error is at most, to
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
    blocks = [(x[i:i + _CENTRE_ROWS].double() - center).to(dtype)
              for i in range(0, len(x), _CENTRE_ROWS)]
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
    for i in range(0, len(x), _CENTRE_ROWS):
        block = (x[i:i + _CENTRE_ROWS].double() - center).mul_(scale)
        out[i:i + _CENTRE_ROWS] = block


def _representable(center: torch.Tensor, dtype: torch.dtype) -> bool:
    return torch.equal(center.to(dtype).double(), center.double())


def mean_center(ref: torch.Tensor) -> torch.Tensor:
    """(d,) float64 center of ref: its mean, rounded to ref's precision when that is float32
    (so that :func:`centred` can centre float32 data by one float32 subtraction)."""
    if ref.dtype == torch.float32:
        return ref.mean(dim=0).double()
    return ref.mean(dim=0, dtype=torch.float64)


def _sq_norms(x: torch.Tensor) -> torch.Tensor:
    """(rows,) float64 squared norms, in row blocks."""
    blocks = [x[i:i + _CENTRE_ROWS].double().square().sum(1)
              for i in range(0, len(x), _CENTRE_ROWS)]
    return torch.cat(blocks) if blocks else x.new_zeros(0, dtype=torch.float64)


def _direct_scan(q, ref, own, k, budget):
    """Float64 differences against every reference, in chunks within the budget."""
    q64 = q.double()
    step = max(1, budget // (8 * q64.numel()))
    d2 = torch.cat([(ref[r0:r0 + step].double().unsqueeze(0) - q64.unsqueeze(1)).square().sum(-1)
                    for r0 in range(0, ref.shape[0], step)], dim=1)  # (b, m)
    if own is not None:
        d2[torch.arange(len(own), device=d2.device), own] = float("inf")
    all_idx = torch.arange(ref.shape[0], device=ref.device).expand(len(q64), -1)
    return take_sorted(d2, all_idx, k)
