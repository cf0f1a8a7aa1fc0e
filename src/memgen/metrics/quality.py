"""Sample quality beside the labels: precision, recall, density and coverage.

Symbols (real set X = {X_i}, N points; fake set Y = {Y_j}, M points; d Euclidean):
    r_i = d(X_i, NN_k(X_i))   distance of X_i to its k-th nearest real neighbour (self
                              excluded by index, so an exact duplicate counts at 0)
    s_j = d(Y_j, NN_k(Y_j))   the same among the fakes
    B(X_i) = {y : d(y, X_i) < r_i}   the open k-NN ball of a real point

    precision = (1/M) Σ_j 1[∃ i: Y_j ∈ B(X_i)]        (Kynkäänniemi et al. 2019)
    recall    = (1/N) Σ_i 1[∃ j: d(X_i, Y_j) < s_j]    (ibid., the roles swapped)
    density   = (1/kM) Σ_j Σ_i 1[Y_j ∈ B(X_i)]        (Naeem et al. 2020)
    coverage  = (1/N) Σ_i 1[min_j d(X_i, Y_j) < r_i]  (ibid.)

These are exactly the definitions of the ``prdc`` package (``compute_prdc``), including
its strict "<". Each depends only on the order of distances, so it is the same for d and
for any increasing function of d: Euclidean distance on pixels (l2) and the squared
Euclidean distance in the LPIPS embedding (features.py, power 2) give identical results
when computed on the embeddings.

Exactness with bounded memory: the radii come from memgen's exact kNN; the ball tests
d(Y_j, X_i) < r_i are screened block by block with a float64 GEMM and every pair whose
screened value lies within a rigorous error band of r_i² is re-decided from the direct
float64 difference ‖Y_j − X_i‖², the same quantity the kNN refines. No N × M matrix is
ever held: one (bM × bN) block at a time, within ``memory_budget`` bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from memgen.errors import UserError
from memgen.metrics.features import embed_sets
from memgen.metrics.nearest import DEFAULT_K
from memgen.metrics.rules import LABEL_NAMES
from memgen.neighbours import as_tensor, block_sizes, get_knn_backend, resolve_budget

_U64 = 2.0**-53  # unit roundoff of float64
_BLOCK_ITEMS = 32  # bytes per (fake, real) pair in one block: scores, bands and masks
_SPLIT_SALT = 2505_21777  # keeps the held-out split independent of the null run's draw


@dataclass(frozen=True)
class Quality:
    """Precision, recall, density and coverage of a fake set against a real set.

    in_manifold: (n_fake,) bool, fake j lies in some real k-NN ball; the precision of a
    subset of the fakes (one label) is the mean of in_manifold over that subset.
    """

    precision: float
    recall: float
    density: float
    coverage: float
    k: int
    n_real: int
    n_fake: int
    in_manifold: np.ndarray = field(repr=False)  # (n_fake,): a short repr in notebooks

    def as_dict(self) -> dict:
        return {"precision": self.precision, "recall": self.recall, "density": self.density,
                "coverage": self.coverage, "k": self.k, "n_real": self.n_real,
                "n_fake": self.n_fake}

    def precision_of(self, mask) -> float | None:
        """Precision of the fakes selected by a (n_fake,) bool mask; None if it selects none."""
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != self.in_manifold.shape:
            raise UserError(f"mask has shape {mask.shape} but there are {self.n_fake} fakes")
        return float(self.in_manifold[mask].mean()) if mask.any() else None


def prdc(real, fake, k: int = DEFAULT_K, *, memory_budget: int | None = None,
         backend: str = "builtin") -> Quality:
    """Precision, recall, density and coverage of ``fake`` (M, D) against ``real`` (N, D).

    Feature arrays or tensors, (n, ...) flattened to vectors; k < N and k < M.
    backend: the exact kNN engine for the radii ("builtin" or "faiss").
    """
    real, fake = _validate(real, fake, k)
    search = get_knn_backend(backend)
    r_real = _radii(real, k, search, memory_budget)
    return _prdc(real, fake, r_real, k, search, memory_budget)


def _validate(real, fake, k: int):
    real, fake = as_tensor(real), as_tensor(fake)
    if real.ndim < 2 or fake.ndim < 2:
        raise UserError("real and fake features need a leading sample axis: shapes (n, d...)")
    if len(real) == 0 or len(fake) == 0:
        raise UserError("real and fake feature sets must not be empty")
    real, fake = real.reshape(len(real), -1), fake.reshape(len(fake), -1)
    if real.shape[1] != fake.shape[1]:
        raise UserError(f"real features have {real.shape[1]} dimensions, fake {fake.shape[1]}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise UserError(f"k must be a positive integer, got {k!r}")
    if k >= len(real) or k >= len(fake):
        raise UserError(f"k={k} needs more than k real and fake samples, got "
                         f"{len(real)} real and {len(fake)} fake")
    if not (torch.isfinite(real).all() and torch.isfinite(fake).all()):
        raise UserError("real or fake features contain NaN or Inf")
    if real.device != fake.device:
        raise UserError(f"real features are on {real.device} but fake on {fake.device}")
    return real, fake


def _radii(x: torch.Tensor, k: int, search, memory_budget) -> torch.Tensor:
    """(n,) float64 distance of every row to its k-th nearest other row (self by index)."""
    return search(x, x, k, exclude_self=True, memory_budget=memory_budget).dist[:, k - 1]


def _prdc(real, fake, r_real, k, search, memory_budget) -> Quality:
    """The four metrics from the real radii; the fake radii (for recall) computed here."""
    n, m = len(real), len(fake)
    per_fake, covered = ball_hits(fake, real, r_real, memory_budget)  # Y_j in B(X_i)
    per_real, _ = ball_hits(real, fake, _radii(fake, k, search, memory_budget), memory_budget)
    inside = (per_fake > 0).cpu().numpy()
    return Quality(precision=float(inside.mean()),
                   recall=float((per_real > 0).double().mean().item()),
                   density=float(per_fake.sum().item() / (k * m)),
                   coverage=float(covered.double().mean().item()), k=int(k), n_real=n, n_fake=m,
                   in_manifold=inside)


def ball_hits(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor,
              memory_budget: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Open-ball membership ‖p_j − c_i‖ < r_i, counted both ways, in bounded memory.

    points: (M, D); centres: (N, D); radii: (N,) float64. Returns (count, hit):
    count (M,) int64 = #{i : p_j ∈ B(c_i)}, hit (N,) bool = ∃ j : p_j ∈ B(c_i).

    Screen: s = ‖p‖² + ‖c‖² − 2 pᵀc in float64 on data centred at the centres' mean,
    with |s − ‖p − c‖²| ≤ γ = 2 (D + 4) u (‖p‖² + max‖c‖²) (``memgen.neighbours.precision.screen_error_bound``).
    Pairs with |s − r_i²| ≤ γ + 4 (D + 4) u r_i² are re-decided by √(Σ (p − c)²) < r_i
    in float64 on the raw data; all others by s < r_i².
    """
    budget = resolve_budget(memory_budget)
    centre = centres.double().mean(dim=0)
    p64, c64 = points.double() - centre, centres.double() - centre
    p_sq, c_sq = p64.square().sum(1), c64.square().sum(1)
    r2 = radii.double().square()
    tol = 4 * (points.shape[1] + 4) * _U64
    gamma = 2 * (points.shape[1] + 4) * _U64 * (p_sq + c_sq.max())  # (M,)
    count = torch.zeros(len(points), dtype=torch.int64, device=points.device)
    hit = torch.zeros(len(centres), dtype=torch.bool, device=points.device)
    bp, bc = block_sizes(len(points), len(centres), budget, itemsize=_BLOCK_ITEMS)
    for p0 in range(0, len(points), bp):
        for c0 in range(0, len(centres), bc):
            rows, cols = slice(p0, p0 + bp), slice(c0, c0 + bc)
            s = torch.addmm(c_sq[cols].unsqueeze(0), p64[rows], c64[cols].T, alpha=-2.0)
            s += p_sq[rows].unsqueeze(1)  # (bp, bc)
            gap = s - r2[cols].unsqueeze(0)
            band = gamma[rows].unsqueeze(1) + tol * r2[cols].unsqueeze(0)
            inside = gap < -band
            unsure = torch.nonzero(gap.abs() <= band)
            if len(unsure):
                inside[unsure[:, 0], unsure[:, 1]] = _direct_inside(
                    points[rows], centres[cols], radii[cols], unsure, budget)
            count[rows] += inside.sum(1)
            hit[cols] |= inside.any(0)
    return count, hit


def _direct_inside(points, centres, radii, pairs, budget) -> torch.Tensor:
    """√(Σ (c − p)²) < r for the (row, col) pairs, in float64, in chunks within the budget."""
    step = max(1, budget // (8 * points.shape[1]))
    out = []
    for i in range(0, len(pairs), step):
        j, c = pairs[i:i + step, 0], pairs[i:i + step, 1]
        d2 = (centres[c].double() - points[j].double()).square().sum(-1)
        out.append(d2.sqrt() < radii[c].double())
    return torch.cat(out)


# ------------------------------------------------------------------ against held-out data


@dataclass(frozen=True)
class HeldoutQuality:
    """An evaluated set's quality and a held-out baseline's, against one reference part.

    quality: evaluated set (fake) vs the reference part of the held-out data (real).
    baseline: the baseline part (real, disjoint from the reference) as the fake set, or
    None when the pool leaves fewer than 2 baseline samples.
    """

    quality: Quality
    baseline: Quality | None
    n_heldout: int


def heldout_split(n_heldout: int, n_eval: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (reference, baseline) index arrays of a held-out pool of n_heldout rows.

    baseline: b = min(n_eval, ⌊n_heldout / 2⌋) rows — the evaluated set's size where the
    pool allows, never more than half of it; reference: min(n_eval, n_heldout − b) of the
    other rows (real and fake sets of equal size, as Naeem et al. 2020 use them; a pool of
    60,000 held-out points would otherwise cost a 60,000² radius search per K).
    Both sorted, drawn from one permutation of ``default_rng([seed, salt])``.
    """
    if n_heldout < 0 or n_eval < 0:
        raise UserError("set sizes must not be negative")
    order = np.random.default_rng([seed, _SPLIT_SALT]).permutation(n_heldout)
    b = min(n_eval, n_heldout // 2)
    return np.sort(order[b:b + min(n_eval, n_heldout - b)]), np.sort(order[:b])


def quality_vs_heldout(eval_set, heldout, *, metric: str | None = None, k: int | None = None,
                       seed: int = 0, memory_budget: int | None = None,
                       backend: str = "builtin") -> HeldoutQuality | None:
    """prdc of ``eval_set`` and of a held-out baseline against held-out reference data.

    Both sets are embedded with the metric's feature map (None: l2), as ``find_neighbours``
    does, unless they come embedded (:class:`~memgen.metrics.features.Embedded`, a
    classify's: its metric), and split by :func:`heldout_split`. k: the given one or 5,
    reduced to the largest every set allows (k < each size), the same for both; None
    when no k ≥ 1 fits (the reference or the evaluated set has fewer than 2 samples).
    """
    ref_idx, base_idx = heldout_split(len(heldout), len(eval_set), seed)
    sizes = [len(ref_idx), len(eval_set)] + ([len(base_idx)] if len(base_idx) >= 2 else [])
    k = min([DEFAULT_K if k is None else int(k)] + [n - 1 for n in sizes])
    if k < 1:
        return None
    (fake, pool), _ = embed_sets(metric, eval_set, heldout)
    fake, pool = fake.vectors, pool.vectors
    ref = pool[torch.from_numpy(ref_idx).to(pool.device)]
    search = get_knn_backend(backend)
    ref, fake = _validate(ref, fake, k)
    r_ref = _radii(ref, k, search, memory_budget)
    baseline = None
    if len(base_idx) >= 2:
        base = _validate(ref, pool[torch.from_numpy(base_idx).to(pool.device)], k)[1]
        baseline = _prdc(ref, base, r_ref, k, search, memory_budget)
    return HeldoutQuality(quality=_prdc(ref, fake, r_ref, k, search, memory_budget),
                          baseline=baseline, n_heldout=len(heldout))


def quality_summary(result: HeldoutQuality, labels: np.ndarray) -> dict:
    """The summary.json "quality" entry: metrics, precision per label, the baseline."""
    q, b = result.quality, result.baseline
    labels = np.asarray(labels)
    payload = q.as_dict()
    payload["precision_by_label"] = {name: q.precision_of(labels == code)
                                     for code, name in enumerate(LABEL_NAMES)}
    payload["baseline"] = None if b is None else {
        "precision": b.precision, "recall": b.recall, "density": b.density,
        "coverage": b.coverage, "n": b.n_fake}
    payload["n_heldout"] = result.n_heldout
    return payload
