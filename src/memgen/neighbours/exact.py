"""Exact k-nearest-neighbour search under Euclidean distance.

The search runs in two passes, the way scikit-learn's brute-force engine bounds
its memory, but with an exactness guarantee that float32 GEMM alone lacks:

1. *Screen* (float32, GEMM-bound; :mod:`memgen.neighbours.screen`). For a block of
   queries Q and a block of references R the squared distances are ‖q‖² + ‖r‖² − 2 qᵀr.
   The ‖q‖² term does not change a row's ranking, so the block computes s = ‖r‖² − 2 qᵀr
   with one GEMM of the rows [q, 1] and [−2r, ‖r‖²] (:class:`Screen`) and keeps the
   ``c = k + margin`` smallest per row (a group-minimum pre-selection, then ``topk``),
   merged across reference blocks.
2. *Refine* (float64; :mod:`memgen.neighbours.refine`). The best candidates of every
   query are re-scored as ‖q − r‖² in float64 from direct differences and sorted by
   (distance, index); only k + 2 of them where the screen separates the rest by more than
   its error.

Where the CPU multiplies bfloat16 in hardware (Intel AMX) and the problem is large, a
bfloat16 screen comes first (:mod:`memgen.neighbours.bf16`; the ``bf16_screen`` argument
forces it on or off); the rows it leaves open go through the float32 screen. The answer is
the same either way.

The float32 screen can mis-order near-ties (cancellation in ‖q‖² + ‖r‖² − 2qᵀr),
so the result is *certified*: with T the largest screened value kept for a row
and γ a rigorous bound on the screening error, every discarded reference has
exact squared distance ≥ T − γ. If the k-th refined distance is below that, the
row is exact; rows that fail the check (rare) are recomputed by a float64 scan
over all references. Both sets are centred on the reference mean, rounded once
to the screen's precision, which makes ‖q‖² and ‖r‖² (and so γ) small; γ
(:func:`~memgen.neighbours.precision.screen_error_bound`) covers the rounding of those
centred coordinates. Ties are broken by the smaller index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from memgen.errors import UserError
from memgen.neighbours.bf16 import Bf16Screen, bf16_pass, use_bf16
from memgen.neighbours.refine import refine_candidates, refine_open, take_sorted
from memgen.neighbours.screen import Screen, block_sizes, screen_candidates

DEFAULT_MEMORY_BUDGET = 512 * 2**20  # bytes for the (queries × references) score block


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
    result = knn_search(as_tensor(query), as_tensor(ref), k, exclude_self=exclude_self,
                        memory_budget=memory_budget, margin=margin, progress=progress)
    if as_numpy:
        return result.dist.cpu().numpy(), result.idx.cpu().numpy()
    return result.dist, result.idx


def knn_search(query: torch.Tensor, ref: torch.Tensor, k: int, *, exclude_self: bool = False,
               memory_budget: int | None = None, margin: int = 8, bound=None,
               progress: bool = False, bf16_screen: bool | None = None) -> KnnResult:
    """Tensor version of :func:`knn` returning a :class:`KnnResult`.

    bound: None, or (n,) distances beyond which query i needs no neighbour (a streamed
    search's running k-th, :func:`memgen.neighbours.stream.stream_knn`). Every neighbour
    closer than bound[i] is then found as without it; the entries of a row past its bound
    may instead be (inf, −1), and a row's refinement is skipped where the screen proves
    every reference at least that far.
    bf16_screen: the bfloat16 pre-screen (:mod:`memgen.neighbours.bf16`): None runs it
    where it pays (:func:`~memgen.neighbours.bf16.use_bf16`), True / False force it on or
    off. The neighbours are the same either way.
    """
    query, ref = validate_search(query, ref, k, exclude_self)
    n, m = query.shape[0], ref.shape[0]
    tau = _squared_bounds(bound, n, query.shape[1], query.device)
    budget = resolve_budget(memory_budget)
    screen = Screen.build(ref, torch.float32)
    n_cand = min(k + margin, m - int(exclude_self))
    q_block, r_block = block_sizes(n, m, budget, itemsize=4)
    fast = Bf16Screen.of(screen) \
        if use_bf16(n, m, query.shape[1], query.device, k, bf16_screen) else None

    dist = torch.empty(n, k, dtype=torch.float64, device=query.device)
    idx = torch.empty(n, k, dtype=torch.int64, device=query.device)
    n_fallback = 0
    starts = range(0, n, q_block)
    for q0 in tqdm(starts, desc="kNN", unit="block", disable=not progress or len(starts) < 2):
        q, t = query[q0:q0 + q_block], None if tau is None else tau[q0:q0 + q_block]
        own = torch.arange(q0, q0 + q.shape[0], device=q.device) if exclude_self else None
        d2, ix, bad = _search_block(q, ref, screen, fast, own, k, n_cand, r_block, t)
        if len(bad):
            n_fallback += len(bad)
            d2[bad], ix[bad] = float64_fallback(q[bad], ref, screen.center,
                                                None if own is None else own[bad], k, margin,
                                                budget)
        dist[q0:q0 + q.shape[0]], idx[q0:q0 + q.shape[0]] = d2.sqrt(), ix
    return KnnResult(dist=dist, idx=idx, n_fallback=n_fallback)


def _search_block(q, ref, screen: Screen, fast: Bf16Screen | None, own, k: int, n_cand: int,
                  r_block: int, tau):
    """One query block through the screens: the bfloat16 one where fast is given, the
    float32 one for the rows it leaves open (all rows without it). Returns d2 (b, k)
    float64 squared, idx (b, k) and the rows neither certified (for the float64 fallback)."""
    if fast is not None:
        d2, ix, ok = bf16_pass(q, ref, screen, fast, own, k, r_block, tau)
        if not ok.all():  # rows the bfloat16 bound leaves open: the float32 screen
            rows = torch.nonzero(~ok).squeeze(1)
            d2[rows], ix[rows], ok[rows] = _certified_pass(
                q[rows], ref, screen, None if own is None else own[rows], k, n_cand,
                r_block, None if tau is None else tau[rows])
    else:
        d2, ix, ok = _certified_pass(q, ref, screen, own, k, n_cand, r_block, tau)
    return d2, ix, torch.nonzero(~ok).squeeze(1)


def _certified_pass(q, ref, screen: Screen, own, k, n_cand, r_block, tau=None):
    """Screen centred data in the screen's precision, refine raw data in float64, certify
    each row: (d2 (b, k) float64 squared, idx (b, k), ok (b,) bool). tau (b,): squared
    bounds (:func:`_squared_bounds`); a row whose every candidate's screened lower bound
    reaches it is not refined ((inf, −1), and certified: the rest screen higher)."""
    q_rows, q_sq = screen.queries(q)
    gamma = screen.bound(q_sq)
    cand_val, cand_idx = screen_candidates(q_rows, screen.rows, n_cand, r_block, own)
    # open unless proved at or past the bound (a NaN score, from overflow, proves nothing)
    open_ = None if tau is None else ~(cand_val.min(dim=1).values + q_sq - gamma >= tau)
    d2, ix = refine_open(open_, lambda r: refine_candidates(q[r], ref, cand_val[r], cand_idx[r],
                                                            k, 2 * gamma[r]),
                         len(q), k, q.device)
    if n_cand >= ref.shape[0] - int(own is not None):  # every reference a candidate,
        return d2, ix, torch.isfinite(cand_val).all(dim=1)  # where overflow chose none
    ok = _certified(cand_val, q_sq, gamma, d2[:, -1])
    if tau is not None:  # every reference left out screens at or past the bound
        ok |= tau <= cand_val.double().max(dim=1).values + q_sq - gamma
    return d2, ix, ok


def _certified(cand_val, q_sq, gamma, kth_d2) -> torch.Tensor:
    """True where no discarded reference can beat the k-th refined distance.

    A discarded reference j has screened score s_j ≥ T (the largest kept score), and
    |s_j + ‖q̃‖² − ‖q − r_j‖²| ≤ γ (:func:`~memgen.neighbours.precision.screen_error_bound`),
    so the row is exact when kth_d2 < T + ‖q̃‖² − γ (strict, so that ties with discarded
    points cannot hide).
    """
    threshold = cand_val.double().max(dim=1).values + q_sq - gamma
    return kth_d2 < threshold


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


def float64_fallback(q, ref, center, own, k, margin, budget):
    """Rows the float32 screen could not certify: a float64 screen, then direct differences."""
    n_cand = min(max(4 * (k + margin), 64), ref.shape[0] - int(own is not None))
    screen = Screen.build(ref, torch.float64, center)
    _, r_block = block_sizes(len(q), ref.shape[0], budget, itemsize=8)
    d2, ix, ok = _certified_pass(q, ref, screen, own, k, n_cand, r_block)
    if not ok.all():
        bad = torch.nonzero(~ok).squeeze(1)
        d2[bad], ix[bad] = _direct_scan(q[bad], ref, None if own is None else own[bad], k, budget)
    return d2, ix


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


def brute_force_knn(query, ref, k: int, exclude_self: bool = False):
    """Reference implementation: all float64 distances, then a stable sort. O(n·m) memory."""
    q = as_tensor(query).reshape(len(query), -1).double()
    r = as_tensor(ref).reshape(len(ref), -1).double()
    d2 = (q[:, None, :] - r[None, :, :]).square().sum(-1)
    if exclude_self:
        d2.fill_diagonal_(float("inf"))
    order = torch.sort(d2, dim=1, stable=True).indices[:, :k]
    return d2.gather(1, order).sqrt().numpy(), order.numpy()


def as_tensor(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    arr = np.asarray(x)
    if arr.dtype == object:
        raise UserError("object arrays are not supported; pass a numeric array")
    return torch.from_numpy(np.ascontiguousarray(arr))


def validate_search(query: torch.Tensor, ref: torch.Tensor, k: int, exclude_self: bool):
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


def resolve_budget(memory_budget: int | None) -> int:
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else int(memory_budget)
    if budget <= 0:
        raise UserError("memory_budget must be a positive number of bytes")
    return budget
