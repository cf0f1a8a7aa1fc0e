"""The float64 refinement: screened candidates re-scored as ‖q − r‖² from direct differences.

The best candidates of every query are re-scored in float64 and sorted by (distance,
index), ties going to the smaller index (:func:`take_sorted`); only k + 2 of them where the
screen separates the rest by more than its error (:func:`refine_candidates`).
"""

from __future__ import annotations

import torch

_REFINE_ROWS = 32  # query rows per float64 refinement step (its temporaries fit in L2)
_REFINE_EXTRA = 2  # candidates re-scored beyond k where the screen separates them


def refine_candidates(q: torch.Tensor, ref: torch.Tensor, cand_val: torch.Tensor,
                      cand_idx: torch.Tensor, k: int, slack: torch.Tensor):
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
    return refine_widths(q, ref, idx, near, k)


def refine_widths(q: torch.Tensor, ref: torch.Tensor, idx: torch.Tensor, need: torch.Tensor,
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


def refine_open(open_, refine, b: int, k: int, device):
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
