"""Exact kNN through faiss's flat (brute-force) L2 index, certified like the built-in engine.

faiss is an optional dependency (``pip install faiss-cpu``): this module imports
without it, and :func:`faiss_knn_search` raises ``ValueError`` when it is missing.

The search mirrors :mod:`memgen.neighbours.exact`:

1. *Screen* with ``faiss.IndexFlatL2`` on float32 data, both sets centred on the
   reference mean and rounded once to float32 (on the GPU when the inputs are CUDA tensors and faiss has GPU
   support), keeping c = k + margin candidates per query (one more with
   ``exclude_self``). faiss computes ‖q‖² + ‖r‖² − 2qᵀr in float32.
2. *Refine* the candidates in float64, ‖q − r‖² exactly as the built-in engine does,
   and sort by (distance, index): both engines return bit-identical results.
3. *Certify* every row: with T the largest value faiss kept for the row and
   γ ≈ (3d + 10) u (‖q‖² + max‖r‖²) the float32 screening error bound (u = 2⁻²⁴) that the
   built-in engine uses (:func:`memgen.neighbours.precision.screen_error_bound`, which covers
   faiss's float32 norms and the rounding of the centred coordinates), every reference
   faiss discarded has exact squared distance ≥ T − γ, so a row whose k-th refined
   squared distance is below T − γ is exact. Rows that fail — and all rows when some
   candidate's screened value is off by more than γ, the sign of a reduced-precision
   screen — are recomputed by the built-in float64 fallback.
"""

from __future__ import annotations

import numpy as np
import torch

from memgen.errors import UserError
from memgen.neighbours.exact import (KnnResult, float64_fallback, resolve_budget,
                                     validate_search)
from memgen.neighbours.precision import centred, mean_center, screen_error_bound, sq_norms
from memgen.neighbours.refine import candidate_sq_dist, take_sorted

try:
    import faiss
except ImportError:  # optional dependency
    faiss = None

MISSING_FAISS = "the faiss backend needs faiss: pip install faiss-cpu"
_UNIT_ROUNDOFF_F32 = 2.0**-24


def faiss_available() -> bool:
    """Whether faiss can be imported."""
    return faiss is not None


def faiss_knn_search(query: torch.Tensor, ref: torch.Tensor, k: int, *,
                     exclude_self: bool = False, memory_budget: int | None = None,
                     margin: int = 8, progress: bool = False) -> KnnResult:
    """Exact top-k Euclidean neighbours of each query row among the rows of ``ref``, via faiss.

    query: (n, ...), ref: (m, ...) with the same trailing shape (flattened to d).
    ``exclude_self=True``: query is ref (n == m) and row i never matches reference i.
    Returns a :class:`KnnResult` — dist (n, k) float64 Euclidean (not squared), idx (n, k)
    int64, ties by smaller index — identical to :func:`memgen.neighbours.exact.knn_search`.
    memory_budget (bytes) bounds the score block of the float64 fallback only; faiss
    blocks its own search. Memory: two float32 copies of ref (centred array and index),
    one of query, and a few (n, c) candidate arrays. On CPU the built-in engine is the
    faster one; faiss pays off with faiss-gpu and CUDA inputs. ``progress`` is accepted for
    signature parity with the built-in engine; faiss reports none.
    """
    if faiss is None:
        raise UserError(MISSING_FAISS)
    query, ref = validate_search(query, ref, k, exclude_self)
    n, m = query.shape[0], ref.shape[0]
    n_cand = min(k + margin, m - int(exclude_self)) + int(exclude_self)
    center = mean_center(ref)
    q32, r32 = _centred_f32(query, center), _centred_f32(ref, center)
    screened, cand = _faiss_search(q32, r32, n_cand, query.device)  # (n, c) each
    exact = candidate_sq_dist(query, ref, cand)  # (n, c) float64, as the built-in engine
    gamma = _screen_bound(q32, r32).to(query.device)  # (n,)
    own = torch.arange(n, device=query.device) if exclude_self else None
    if own is not None:
        exact = exact.masked_fill(cand == own.unsqueeze(1), float("inf"))
    d2, idx = take_sorted(exact, cand, k)
    ok = _certified(screened, exact, gamma, d2[:, -1], complete=n_cand >= m)
    n_fallback = int((~ok).sum())
    if n_fallback:
        bad = torch.nonzero(~ok).squeeze(1)
        d2[bad], idx[bad] = float64_fallback(query[bad], ref, center,
                                             None if own is None else own[bad], k, margin,
                                             resolve_budget(memory_budget))
    return KnnResult(dist=d2.sqrt(), idx=idx, n_fallback=n_fallback)


def _centred_f32(x: torch.Tensor, center: torch.Tensor) -> np.ndarray:
    """(rows, d) float32 C-contiguous numpy array of x − center, centred as the built-in
    engine does (the same center for both sets, rounded once to float32)."""
    return np.ascontiguousarray(centred(x, center).cpu().numpy())


def _faiss_search(q32: np.ndarray, r32: np.ndarray, c: int, device: torch.device):
    """faiss's c smallest squared distances (n, c) float64 and their indices (n, c) int64."""
    index = faiss.IndexFlatL2(r32.shape[1])
    if device.type == "cuda" and _faiss_gpus() > 0:
        resources = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(resources, device.index or 0, index)
    index.add(r32)
    dist, idx = index.search(q32, c)
    assert (idx >= 0).all(), "a flat index returns c ≤ m neighbours for every query"
    return (torch.from_numpy(dist).to(device=device, dtype=torch.float64),
            torch.from_numpy(idx).to(device))


def _faiss_gpus() -> int:
    """GPUs faiss can use (0 for faiss-cpu builds)."""
    if not hasattr(faiss, "StandardGpuResources") or not hasattr(faiss, "get_num_gpus"):
        return 0
    return faiss.get_num_gpus()


def _screen_bound(q32: np.ndarray, r32: np.ndarray) -> torch.Tensor:
    """γ (n,) float64: bound on |faiss value − exact squared distance| for float32 screening
    of the centred data, the built-in engine's
    :func:`~memgen.neighbours.precision.screen_error_bound`."""
    q_sq, r_sq = sq_norms(torch.from_numpy(q32)), sq_norms(torch.from_numpy(r32))
    return screen_error_bound(q_sq, r_sq.max(), q32.shape[1], _UNIT_ROUNDOFF_F32)


def _certified(screened, exact, gamma, kth_d2, complete: bool) -> torch.Tensor:
    """True where no reference faiss discarded can beat the k-th refined squared distance.

    screened, exact: (n, c) faiss and float64 values of the candidates (exact may hold
    inf for an excluded self-match); gamma, kth_d2: (n,).
    """
    rows = len(kth_d2)
    if complete:  # every reference was a candidate
        return torch.ones(rows, dtype=torch.bool, device=kth_d2.device)
    finite = torch.isfinite(exact)
    error = torch.where(finite, (screened - exact).abs(), torch.zeros_like(exact))
    if (error.amax(dim=1) > gamma).any():  # the screen was not float32-accurate: trust nothing
        return torch.zeros(rows, dtype=torch.bool, device=kth_d2.device)
    return kth_d2 < screened.amax(dim=1) - gamma
