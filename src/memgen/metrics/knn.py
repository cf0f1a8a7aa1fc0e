"""Exact k-nearest-neighbour search under Euclidean distance.

The search runs in two passes, the way scikit-learn's brute-force engine bounds
its memory, but with an exactness guarantee that float32 GEMM alone lacks:

1. *Screen* (float32, GEMM-bound). For a block of queries Q and a block of
   references R the squared distances are ‖q‖² + ‖r‖² − 2 qᵀr. The ‖q‖² term
   does not change a row's ranking, so the block computes ‖r‖² − 2 qᵀr with one
   ``addmm`` and keeps the ``c = k + margin`` smallest per row, merged across
   reference blocks.
2. *Refine* (float64). The c candidates of every query are re-scored as
   ‖q − r‖² in float64 and sorted by (distance, index).

The float32 screen can mis-order near-ties (cancellation in ‖q‖² + ‖r‖² − 2qᵀr),
so the result is *certified*: with T the largest screened value kept for a row
and γ a rigorous bound on the screening error, every discarded reference has
exact squared distance ≥ T − γ. If the k-th refined distance is below that, the
row is exact; rows that fail the check (rare) are recomputed by a float64 scan
over all references. Both sets are centred in float64 on the reference mean, then
rounded to the screen's precision, which makes ‖q‖² and ‖r‖² (and so γ) small; γ
(:func:`screen_error_bound`) covers the rounding of those centred coordinates. Ties
are broken by the smaller index. :func:`pairwise_sq_dist` serves the energies with the
same centring: float64-exact squared distances wherever a softmax weight can see them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from memgen.errors import UserError

DEFAULT_MEMORY_BUDGET = 512 * 2**20  # bytes for the (queries × references) score block
_R_BLOCK_MAX = 8192
_GROUP = 16  # columns per group in the group-minimum pre-selection of _smallest
_REFINE_ROWS = 64  # query rows per float64 refinement step
_CENTRE_ROWS = 8192  # rows per block when centring or taking norms in float64
_SCREEN_MIN_DIM = 32  # below this a float64 GEMM costs no more than the float32 screen


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
               memory_budget: int | None = None, margin: int = 8,
               progress: bool = False) -> KnnResult:
    """Tensor version of :func:`knn` returning a :class:`KnnResult`."""
    query, ref = _validate(query, ref, k, exclude_self)
    n, m = query.shape[0], ref.shape[0]
    budget = _budget(memory_budget)
    center = ref.mean(dim=0, dtype=torch.float64)
    r32 = centred(ref, center)
    r_sq32 = _sq_norms(r32).float()
    n_cand = min(k + margin, m - int(exclude_self))
    q_block, r_block = _block_sizes(n, m, budget, itemsize=4)

    dist = torch.empty(n, k, dtype=torch.float64, device=query.device)
    idx = torch.empty(n, k, dtype=torch.int64, device=query.device)
    n_fallback = 0
    starts = range(0, n, q_block)
    for q0 in tqdm(starts, desc="kNN", unit="block", disable=not progress or len(starts) < 2):
        q = query[q0:q0 + q_block]
        own = torch.arange(q0, q0 + q.shape[0], device=q.device) if exclude_self else None
        q32 = centred(q, center)
        d2, ix, ok = _certified_pass(q, q32, ref, r32, r_sq32, own, k, n_cand, r_block)
        if not ok.all():
            bad = torch.nonzero(~ok).squeeze(1)
            n_fallback += len(bad)
            d2[bad], ix[bad] = _fallback(q[bad], ref, center, None if own is None else own[bad],
                                         k, margin, budget)
        dist[q0:q0 + q.shape[0]], idx[q0:q0 + q.shape[0]] = d2.sqrt(), ix
    return KnnResult(dist=dist, idx=idx, n_fallback=n_fallback)


def _certified_pass(q, q_scr, ref, r_scr, r_sq, own, k, n_cand, r_block):
    """Screen centred data in r_scr's precision, refine raw data in float64, certify each row."""
    cand_val, cand_idx = _screen(q_scr, r_scr, r_sq, n_cand, r_block, own)
    d2, ix = _refine(q, ref, cand_idx, k)
    if n_cand >= ref.shape[0] - int(own is not None):
        return d2, ix, torch.ones(len(q), dtype=torch.bool, device=q.device)
    return d2, ix, _certified(q_scr, r_sq, cand_val, d2[:, -1], _unit_roundoff(r_scr.dtype))


def _fallback(q, ref, center, own, k, margin, budget):
    """Rows the float32 screen could not certify: a float64 screen, then direct differences."""
    n_cand = min(max(4 * (k + margin), 64), ref.shape[0] - int(own is not None))
    r64 = centred(ref, center, torch.float64)
    _, r_block = _block_sizes(len(q), ref.shape[0], budget, itemsize=8)
    d2, ix, ok = _certified_pass(q, centred(q, center, torch.float64), ref, r64, _sq_norms(r64),
                                 own, k, n_cand, r_block)
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
    if not 1 <= k <= available:
        raise UserError(f"k={k} neighbours requested but the reference set offers {available}")
    query, ref = query.reshape(query.shape[0], -1), ref.reshape(ref.shape[0], -1)
    if not (torch.isfinite(query).all() and torch.isfinite(ref).all()):
        raise UserError("query or reference contains NaN or Inf")
    return query, ref


def _budget(memory_budget: int | None) -> int:
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else int(memory_budget)
    if budget <= 0:
        raise UserError("memory_budget must be a positive number of bytes")
    return budget


def _block_sizes(n: int, m: int, budget: int, itemsize: int) -> tuple[int, int]:
    """Query and reference block sizes whose score block fits the budget.

    Blocks of at most 2048 × 8192 (64 MiB in float32) stay cache- and page-friendly;
    larger ones cost more in page faults than they save in loop overhead.
    """
    elements = max(budget // itemsize, 1)
    q_block = max(1, min(n, 2048, elements // min(m, _R_BLOCK_MAX)))
    r_block = max(1, min(m, _R_BLOCK_MAX, elements // q_block))
    return q_block, r_block


def _screen(q: torch.Tensor, r: torch.Tensor, r_sq: torch.Tensor, n_cand: int, r_block: int,
            own: torch.Tensor | None):
    """The n_cand smallest ‖r‖² − 2qᵀr per query row, merged across reference blocks.

    own: (bq,) reference index of each query itself (excluded), or None.
    """
    best_val = best_idx = None
    rows = torch.arange(q.shape[0], device=q.device)
    buffer = torch.empty(q.shape[0] * min(r_block, r.shape[0]), dtype=q.dtype, device=q.device)
    for r0 in range(0, r.shape[0], r_block):
        r1 = min(r0 + r_block, r.shape[0])
        scores = buffer[:q.shape[0] * (r1 - r0)].view(q.shape[0], r1 - r0)  # (bq, br)
        torch.addmm(r_sq[r0:r1].unsqueeze(0), q, r[r0:r1].T, alpha=-2.0, out=scores)
        if own is not None:
            hit = (own >= r0) & (own < r1)
            scores[rows[hit], own[hit] - r0] = float("inf")
        val, pos = _smallest(scores, min(n_cand, r1 - r0))
        pos += r0
        if best_val is not None:
            val, pos = torch.cat([best_val, val], 1), torch.cat([best_idx, pos], 1)
            if val.shape[1] > n_cand:
                val, sel = torch.topk(val, n_cand, dim=1, largest=False, sorted=False)
                pos = pos.gather(1, sel)
        best_val, best_idx = val, pos
    return best_val, best_idx


def _smallest(scores: torch.Tensor, c: int):
    """The c smallest entries per row and their columns (unsorted).

    Group-minimum pre-selection: split a row into groups of _GROUP columns; the c
    smallest entries lie in the c groups with the smallest minima (each of them sits
    in a group whose minimum is no larger, and at most c such groups exist), so topk
    runs on the group minima and then on c·_GROUP gathered entries. Every entry left
    out is ≥ the c-th group minimum ≥ the c-th smallest entry, as certification needs.
    """
    b, w = scores.shape
    if w < 4 * c * _GROUP or w % _GROUP:
        return torch.topk(scores, c, dim=1, largest=False, sorted=False)
    minima = scores.view(b, w // _GROUP, _GROUP).amin(dim=2)  # (b, groups)
    groups = torch.topk(minima, c, dim=1, largest=False, sorted=False).indices
    cols = (groups.unsqueeze(2) * _GROUP + torch.arange(_GROUP, device=scores.device)).view(b, -1)
    val, sel = torch.topk(scores.gather(1, cols), c, dim=1, largest=False, sorted=False)
    return val, cols.gather(1, sel)


def _refine(q: torch.Tensor, ref: torch.Tensor, cand_idx: torch.Tensor, k: int):
    """Float64 squared distances of the raw candidates; the k best by (distance, index)."""
    d2 = torch.cat([
        (ref[cand_idx[i:i + _REFINE_ROWS]].double()
         - q[i:i + _REFINE_ROWS].double().unsqueeze(1)).square().sum(-1)  # (rows, c)
        for i in range(0, len(q), _REFINE_ROWS)])
    return take_sorted(d2, cand_idx, k)


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


def _certified(q_scr, r_sq, cand_val, kth_d2, u: float) -> torch.Tensor:
    """True where no discarded reference can beat the k-th refined distance.

    A discarded reference j has screened score s_j ≥ T (the largest kept score), and
    |s_j + ‖q‖² − ‖q − r_j‖²| ≤ γ (:func:`screen_error_bound`), so the row is exact when
    kth_d2 < T + ‖q‖² − γ (strict, so that ties with discarded points cannot hide).
    """
    q_sq = _sq_norms(q_scr)
    gamma = screen_error_bound(q_sq, r_sq.double().max(), q_scr.shape[1], u)
    threshold = cand_val.double().max(dim=1).values + q_sq - gamma
    return kth_d2 < threshold


def screen_error_bound(q_sq: torch.Tensor, r_sq_max, d: int, u: float) -> torch.Tensor:
    """γ (n,): a rigorous bound on |screened − exact| squared distance of a centred screen.

    q_sq: (n,) float64 ‖q̃‖² of the centred, rounded queries; r_sq_max: max ‖r̃‖² over the
    references; d: dimension; u: unit roundoff of the screen (:func:`_unit_roundoff`).
    Valid for both screens in use, s + ‖q̃‖² with s = ‖r̃‖² − 2q̃ᵀr̃ (one addmm) and faiss's
    ‖q̃‖² + ‖r̃‖² − 2q̃ᵀr̃ (or Σ(q̃ − r̃)²), all in the screen's precision. With Q = ‖q̃‖²,
    R = ‖r̃‖² and 2‖q̃‖‖r̃‖ ≤ Q + R, the error is at most, to first order in u:
      4u(Q + R)   rounding of the centred coordinates: q̃ = fl(fl64(q − c)) has relative
                  error ≤ u + 2⁻⁵³ per coordinate (a float64 difference and one cast, each
                  correctly rounded), for q and r alike, so ‖q̃ − r̃‖² is within this of ‖q − r‖²;
      d·u(Q + R)  the two squared norms (a length-d sum in any order: γ_d ≤ d·u/(1 − d·u));
      d·u(Q + R)  the dot product 2q̃ᵀr̃;
      4u(Q + R)   the two additions that combine the three terms.
    That is (2d + 8)u(Q + R); the factor 1/(1 − (d + 4)u) covers the second-order terms
    and (4d + 16)·2⁻⁵³(Q + R) the float64 parts: the refined distances (relative error
    ≤ (d + 1)·2⁻⁵³ of a value ≤ 2(Q + R)), ‖q̃‖² and the threshold arithmetic. The bound
    is infinite when (d + 4)u ≥ ½, where no screen of that precision can certify.
    """
    if (d + 4) * u >= 0.5:
        return torch.full_like(q_sq, float("inf"))
    rate = (2 * d + 8) * u / (1 - (d + 4) * u) + (4 * d + 16) * 2.0**-53
    return rate * (q_sq + r_sq_max)


def centred(x: torch.Tensor, center: torch.Tensor, dtype: torch.dtype = torch.float32
            ) -> torch.Tensor:
    """x − center computed in float64 and rounded once to dtype: (rows, d).

    Every set compared must be shifted by the same float64 center: a center rounded to
    the data's precision would move one set against the other. Converted in row blocks,
    so the float64 copy of a large set never exists at once.
    """
    if len(x) <= _CENTRE_ROWS:
        return (x.double() - center).to(dtype)
    return torch.cat([(x[i:i + _CENTRE_ROWS].double() - center).to(dtype)
                      for i in range(0, len(x), _CENTRE_ROWS)])


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
