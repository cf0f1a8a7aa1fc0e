"""The screen: one GEMM per block of queries and references, the c best scores per row kept.

For a block of queries Q and a block of references R the squared distances are
‖q‖² + ‖r‖² − 2 qᵀr. The ‖q‖² term does not change a row's ranking, so the block computes
s = ‖r̃‖² − 2 q̃ᵀr̃ of the centred data (:mod:`memgen.neighbours.precision`) with one GEMM of
the rows [q̃, 1] and [−2r̃, ‖r̃‖²] (:class:`Screen`) and keeps the c smallest per row (a
group-minimum pre-selection, then ``topk``), merged across reference blocks
(:func:`screen_candidates`), in blocks that fit a memory budget (:func:`block_sizes`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from memgen.neighbours.precision import (CENTRE_ROWS, centre_into, mean_center,
                                         screen_error_bound, unit_roundoff)

_R_BLOCK_MAX = 4096
_GROUP = 16  # columns per group in the group-minimum pre-selection of _smallest


@dataclass(frozen=True)
class Screen:
    """The reference side of a screen in one precision: centred references as GEMM rows.

    rows[j] = [−2r̃_j, fl(‖r̃_j‖²)], with r̃_j = ref_j − center rounded once to the screen's
    dtype (:func:`~memgen.neighbours.precision.centred`), so that a query row [q̃, 1]
    (:meth:`queries`) gives the score s = ‖r̃‖² − 2q̃ᵀr̃ of every reference in one GEMM,
    with no pass to add the norms.
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
        for i in range(0, m, CENTRE_ROWS):
            block = rows[i:i + CENTRE_ROWS, :d]
            centre_into(block, ref[i:i + CENTRE_ROWS], center, scale=-2.0)
            norm = torch.linalg.vector_norm(block, dim=1)  # 2‖r̃‖, exactly twice that of r̃
            rows[i:i + CENTRE_ROWS, d] = norm.square_().mul_(0.25)
        u = unit_roundoff(dtype)
        r_sq_max = float(rows[:, d].max()) * (1 + (d + 4) * u) if m else 0.0
        return cls(center=center, rows=rows, r_sq_max=r_sq_max)

    @property
    def unit_roundoff(self) -> float:
        return unit_roundoff(self.rows.dtype)

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


def block_sizes(n: int, m: int, budget: int, itemsize: int) -> tuple[int, int]:
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


def screen_candidates(q_rows: torch.Tensor, r_rows: torch.Tensor, n_cand: int, r_block: int,
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
