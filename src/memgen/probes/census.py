"""Attractor census: where the endpoints of deterministic sampling go (issue #25, item 2).

M seeded noises are carried to the end of a deterministic ladder (DDIM at η = 0 or the
Heun PF-ODE: the ``SamplerSpec``s with ``deterministic=True``; ``memgen census`` draws
them through ``memgen.diffusion.generate``, one stream per sample). Their endpoints
x_1 … x_M are clustered by single linkage at a radius r in pixel ℓ2: x_a and x_b share a
cluster when a chain of endpoints joins them with every link ‖x_i − x_j‖ ≤ r (the
connected components of the r-graph; scipy's ``fcluster(linkage(·, 'single'), r,
'distance')``). The training images do not take part in the linkage; a cluster is

    memorized   some member lies within r of a training image (a memorized attractor),
    spurious    ≥ 2 members and no training image within r of any (a recurring new
                attractor: the paper's spurious state),
    singleton   one member, no training image within r (a generalized endpoint).

The radius is set from the data, and stated: r = f · median_h min_i ‖h − y_i‖ over held-out
images h and training images y_i (``RadiusRule``), for each fraction f asked. The same
clustering of the held-out images at the same r is the null: how much mass recurring
clusters away from the training images hold where no model is involved.

Whether the endpoints lie on the data: each endpoint is on the data manifold when it
falls inside a k-nearest-neighbour ball (k = 5) of a held-out reference part
(Kynkäänniemi et al. 2019; ``memgen.metrics.quality.quality_vs_heldout``: held-out data
split into a reference and a baseline part); the share of a kind's endpoints on it is that
kind's precision, beside the held-out baseline part's own (``census.csv``'s
``precision_*`` and ``heldout_precision``; the issue's bar: spurious precision ≥ half the
held-out one). NaN where the held-out set is too small for k ≥ 1.

For a spurious attractor with centre c (its members' mean) and nearest training images
y₁, y₂ (d1 ≤ d2): t = ⟨c − y₁, y₂ − y₁⟩/‖y₂ − y₁‖² places c's projection on the line
through them (0 at y₁, 1 at y₂: inside the segment for 0 < t < 1), ``offset`` is c's
distance from that line, and ``shared`` the share of members whose own two nearest
training images are {y₁, y₂}: a mixture of two images lies between them (0 < t < 1,
offset small against ‖y₂ − y₁‖), an imperfect copy of one has d1/d2 small.

Distances are exact in float64: the r-graph is screened by one float64 GEMM of centred
data per block of rows (``memgen.neighbours.pairwise_sq_dist``) and every pair within the
screen's rigorous error bound of r² is recomputed from direct differences; the nearest
training images come from the exact kNN engine. Memory is bounded by the block (about
``_PAIR_BUDGET`` bytes of distances at a time), never M².
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from memgen.errors import UserError
from memgen.io import atomic_file
from memgen.metrics.quality import quality_vs_heldout
from memgen.neighbours import knn_search, pairwise_sq_dist, screen_error_bound, unit_roundoff

_PAIR_BUDGET = 64 * 2**20  # bytes of float64 distances per block of rows
KINDS = ("memorized", "spurious", "singleton")
ENDPOINTS = "endpoints"  # the endpoints' set name (endpoints.npz and its shards; its seed)


def as_rows(x) -> torch.Tensor:
    """(N, D) float64 CPU tensor of a (N, ...) array or tensor."""
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if x.ndim < 1 or len(x) == 0:
        raise UserError("need a non-empty (N, ...) set of points")
    return x.reshape(len(x), -1).to("cpu", torch.float64)


# ------------------------------------------------------------------ the radius rule


@dataclass(frozen=True)
class RadiusRule:
    """r = fraction · median over held-out images of the distance to the nearest training
    image (pixel ℓ2, the units of the data)."""

    fraction: float
    heldout_median: float  # median_h min_i ‖h − y_i‖

    @property
    def radius(self) -> float:
        return self.fraction * self.heldout_median


def heldout_median(train, heldout) -> float:
    """median_h min_i ‖h − y_i‖: the held-out images' typical distance to the training set."""
    near = knn_search(as_rows(heldout), as_rows(train), 1)
    return float(np.median(near.dist[:, 0].numpy()))


def radius_rules(train, heldout, fractions) -> tuple[RadiusRule, ...]:
    """The rule for each fraction (> 0, each once); UserError when the held-out images sit
    on the training images (median 0: no radius can be set from them)."""
    fractions = [float(f) for f in fractions]
    if not fractions or not all(f > 0 for f in fractions):
        raise UserError(f"give one or more positive radius fractions, got {fractions}")
    if len(set(fractions)) != len(fractions):
        raise UserError(f"each radius fraction may appear only once, got {fractions}")
    median = heldout_median(train, heldout)
    if not median > 0:
        raise UserError("the held-out images' median distance to the training set is 0 "
                        "(held-out copies of training images?): no radius can be set")
    return tuple(RadiusRule(f, median) for f in fractions)


# --------------------------------------------------------------- single linkage


def single_linkage(points, radius: float) -> np.ndarray:
    """Cluster labels (M,) of single linkage cut at ``radius``: the connected components of
    the graph joining every pair with ‖x_a − x_b‖ ≤ radius, numbered 0, 1, … in the order
    of each cluster's first member. Exact in float64; memory bounded by ``_PAIR_BUDGET``."""
    x = as_rows(points)
    if not radius >= 0:
        raise UserError(f"the radius must be non-negative, got {radius}")
    m = len(x)
    centred = x - x.mean(0)
    sq = centred.square().sum(1)  # (M,) ‖x̃‖²
    gamma = screen_error_bound(sq, float(sq.max()), x.shape[1], unit_roundoff(torch.float64))
    root = np.arange(m)  # each point's component, named by its smallest member
    block = max(1, _PAIR_BUDGET // (8 * m))
    for b0 in range(0, m, block):
        rows, cols = _linked_pairs(x, b0, min(m, b0 + block), radius, gamma)
        root = _merge(root, rows, cols)
    _, labels = np.unique(root, return_inverse=True)  # roots ascend as first members do
    return labels.astype(np.int64)


def _linked_pairs(x: torch.Tensor, b0: int, b1: int, radius: float, gamma: torch.Tensor):
    """(rows, cols) of the pairs a < b with a in [b0, b1) and ‖x_a − x_b‖ ≤ radius: screened
    by float64 GEMM, the pairs within the screen's error bound γ_a of r² recomputed."""
    d2 = pairwise_sq_dist(x[b0:b1], x[b0:])  # (B, M − b0)
    r2 = radius * radius
    slack = gamma[b0:b1].unsqueeze(1)
    sure = d2 <= r2 - slack
    unsure = torch.nonzero((d2 - r2).abs() <= slack, as_tuple=True)
    rows, cols = torch.nonzero(sure, as_tuple=True)
    if len(unsure[0]):
        a, b = unsure
        exact = (x[b0 + a] - x[b0 + b]).square().sum(1) <= r2
        rows, cols = torch.cat([rows, a[exact]]), torch.cat([cols, b[exact]])
    keep = cols > rows  # (a, b) with a < b; the diagonal and the lower part are redundant
    return (rows[keep] + b0).numpy(), (cols[keep] + b0).numpy()


def _merge(root: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Components of the graph of edges (a, root[a]) for every a and the new pairs, each
    named by its smallest member."""
    m = len(root)
    a = np.concatenate([np.arange(m), rows])
    b = np.concatenate([root, cols])
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(m, m))
    _, comp = connected_components(graph, directed=False)
    first = np.full(comp.max() + 1, m)
    np.minimum.at(first, comp, np.arange(m))
    return first[comp]


# ---------------------------------------------------------------------- results


@dataclass(frozen=True)
class SpuriousAttractor:
    """A recurring cluster with no training image within r, placed between its two nearest
    training images (module docstring: t, offset, shared)."""

    cluster: int
    size: int
    mass: float  # size / M
    nearest: tuple[int, int]  # indices of y₁, y₂ in the training set (−1: K = 1)
    d1: float
    d2: float
    ratio: float  # d1/d2
    t: float  # projection coefficient of the centre on the line y₁ → y₂
    offset: float  # the centre's distance from that line
    segment: float  # ‖y₂ − y₁‖
    shared: float  # share of members whose two nearest training images are {y₁, y₂}
    spread: float  # RMS distance of the members from the centre


@dataclass(frozen=True)
class Census:
    """Clusters of N points at radius r (A clusters)."""

    radius: float
    labels: np.ndarray  # (N,) cluster of each point
    sizes: np.ndarray  # (A,) members: the basin of each attractor, in points
    kinds: np.ndarray  # (A,) str: memorized | spurious | singleton
    training_image: np.ndarray  # (A,) nearest training image of the closest member, or −1
    spurious: tuple[SpuriousAttractor, ...]

    @property
    def n_points(self) -> int:
        return len(self.labels)

    @property
    def n_clusters(self) -> int:
        return len(self.sizes)

    @property
    def basins(self) -> np.ndarray:
        """(A,) basin masses: each cluster's share of the points."""
        return self.sizes / self.n_points

    def count(self, kind: str) -> int:
        return int((self.kinds == kind).sum())

    def mass(self, kind: str) -> float:
        """Share of the points in clusters of this kind."""
        return float(self.sizes[self.kinds == kind].sum() / self.n_points)


def census(points, train, radius: float) -> Census:
    """The census of ``points`` (N, ...) at ``radius`` against the training set (K, ...)."""
    x, y = as_rows(points), as_rows(train)
    if x.shape[1] != y.shape[1]:
        raise UserError(f"points of {x.shape[1]} values cannot be compared with training "
                        f"images of {y.shape[1]}")
    labels = single_linkage(x, radius)
    near = knn_search(x, y, min(2, len(y)))
    d1, i1 = near.dist[:, 0].numpy(), near.idx[:, 0].numpy()
    sizes = np.bincount(labels)
    closest = np.full(len(sizes), np.inf)
    np.minimum.at(closest, labels, d1)
    at = closest <= radius
    kinds = np.where(at, "memorized", np.where(sizes >= 2, "spurious", "singleton"))
    order = np.lexsort((d1, labels))  # by cluster, then by distance to the training set
    _, first = np.unique(labels[order], return_index=True)
    training = np.where(at, i1[order[first]], -1)  # the closest member's nearest image
    spurious = tuple(_spurious(x, y, labels, c, near) for c in np.nonzero(kinds == "spurious")[0])
    return Census(float(radius), labels, sizes, kinds, training, spurious)


def _spurious(x, y, labels, cluster: int, near) -> SpuriousAttractor:
    members = np.nonzero(labels == cluster)[0]
    centre = x[members].mean(0)
    spread = float((x[members] - centre).square().sum(1).mean().sqrt())
    own = knn_search(centre[None], y, min(2, len(y)))
    pair = own.idx[0].tolist() + [-1] * (2 - own.idx.shape[1])
    d = own.dist[0].tolist() + [float("nan")] * (2 - own.dist.shape[1])
    t, offset, segment = mixture_coefficients(centre, y[pair[0]],
                                              y[pair[1]] if pair[1] >= 0 else None)
    if near.idx.shape[1] == 2:
        theirs = np.sort(near.idx[members].numpy(), axis=1)
        shared = float((theirs == np.sort(pair)).all(1).mean())
    else:
        shared = float("nan")
    return SpuriousAttractor(int(cluster), len(members), len(members) / len(labels),
                             (pair[0], pair[1]), d[0], d[1], d[0] / d[1], t, offset, segment,
                             shared, spread)


def mixture_coefficients(c: torch.Tensor, y1: torch.Tensor, y2: torch.Tensor | None
                         ) -> tuple[float, float, float]:
    """(t, offset, ‖y₂ − y₁‖) of c against the line through y₁ and y₂:
    t = ⟨c − y₁, y₂ − y₁⟩/‖y₂ − y₁‖², offset = ‖c − y₁ − t(y₂ − y₁)‖ (NaN without y₂ or
    when y₂ = y₁)."""
    if y2 is None:
        return float("nan"), float("nan"), float("nan")
    u = (y2 - y1).double()
    length2 = float(u.square().sum())
    if length2 == 0:
        return float("nan"), float("nan"), 0.0
    v = (c - y1).double()
    t = float(v @ u) / length2
    return t, float((v - t * u).norm()), length2 ** 0.5


# ------------------------------------------------------------------ several radii


@dataclass(frozen=True)
class CensusRow:
    """The census of the endpoints and of the held-out null at one radius."""

    rule: RadiusRule
    endpoints: Census
    null: Census
    on_manifold: np.ndarray | None = None  # (M,) bool: endpoint inside the held-out manifold
    heldout_precision: float = float("nan")  # the held-out baseline part's precision

    def precision(self, kind: str) -> float:
        """Share of the endpoints in clusters of this kind that lie on the held-out manifold
        (NaN without a manifold or without such endpoints)."""
        if self.on_manifold is None:
            return float("nan")
        members = self.endpoints.kinds[self.endpoints.labels] == kind
        return float(self.on_manifold[members].mean()) if members.any() else float("nan")


@dataclass(frozen=True)
class CensusRun:
    """The census at every radius asked (the table)."""

    heldout_median: float
    n_train: int
    rows: tuple[CensusRow, ...]


def census_at_radii(endpoints, train, heldout, fractions) -> CensusRun:
    """The census of the endpoints and of the held-out images at r = f · the held-out median
    distance to the training set, for each fraction f."""
    rules = radius_rules(train, heldout, fractions)
    on_manifold, heldout_precision = manifold(endpoints, heldout)
    rows = tuple(CensusRow(rule, census(endpoints, train, rule.radius),
                           census(heldout, train, rule.radius), on_manifold, heldout_precision)
                 for rule in rules)
    return CensusRun(rules[0].heldout_median, len(as_rows(train)), rows)


def manifold(endpoints, heldout) -> tuple[np.ndarray | None, float]:
    """(M,) whether each endpoint lies inside the k-NN balls of the held-out reference part,
    and the held-out baseline part's precision (module docstring); (None, NaN) where the
    held-out set is too small."""
    quality = quality_vs_heldout(as_rows(endpoints), as_rows(heldout))
    if quality is None:
        return None, float("nan")
    baseline = float("nan") if quality.baseline is None else quality.baseline.precision
    return np.asarray(quality.quality.in_manifold, dtype=bool), baseline


# ---------------------------------------------------------------------- writers


def summary_row(row: CensusRow) -> dict:
    """One line of census.csv: the radius, then the endpoints' and the null's counts and
    masses."""
    out = {"fraction": row.rule.fraction, "radius": row.rule.radius}
    for prefix, c in (("", row.endpoints), ("null_", row.null)):
        out[f"{prefix}n_points"] = c.n_points
        out[f"{prefix}n_clusters"] = c.n_clusters
        for kind in KINDS:
            out[f"{prefix}n_{kind}"] = c.count(kind)
        for kind in KINDS:
            out[f"{prefix}mass_{kind}"] = c.mass(kind)
    for kind in KINDS:
        out[f"precision_{kind}"] = row.precision(kind)
    out["heldout_precision"] = row.heldout_precision
    return out


def spurious_rows(run: CensusRun) -> list[dict]:
    """One line of spurious.csv per spurious attractor of the endpoints, at every radius."""
    return [{"fraction": row.rule.fraction, "radius": row.rule.radius,
             **{k: v for k, v in asdict(s).items() if k != "nearest"},
             "nearest_1": s.nearest[0], "nearest_2": s.nearest[1]}
            for row in run.rows for s in row.endpoints.spurious]


def census_record(run: CensusRun) -> dict:
    """census.json: the rule, and per radius the table's line, the basin masses (largest
    first) and the spurious attractors."""
    return {
        "radius_rule": "r = fraction x median over held-out images of the pixel-l2 distance "
                       "to the nearest training image",
        "heldout_median": run.heldout_median, "n_train": run.n_train,
        "radii": [{**summary_row(row),
                   "basins": sorted(row.endpoints.basins.tolist(), reverse=True),
                   "basin_kinds": row.endpoints.kinds[
                       np.argsort(-row.endpoints.sizes, kind="stable")].tolist(),
                   "spurious": [asdict(s) for s in row.endpoints.spurious]}
                  for row in run.rows]}


def write_census(out: str | Path, run: CensusRun) -> list[Path]:
    """census.csv (one line per radius), spurious.csv and census.json into ``out``."""
    out = Path(out)
    paths = [out / "census.csv", out / "spurious.csv", out / "census.json"]
    _write_csv(paths[0], [summary_row(row) for row in run.rows])
    _write_csv(paths[1], spurious_rows(run), list(_SPURIOUS_FIELDS))
    with atomic_file(paths[2]) as tmp:
        tmp.write_text(json.dumps(census_record(run), indent=2) + "\n")
    return paths


_SPURIOUS_FIELDS = ("fraction", "radius", "cluster", "size", "mass", "d1", "d2", "ratio", "t",
                    "offset", "segment", "shared", "spread", "nearest_1", "nearest_2")


def _write_csv(path: Path, rows: list[dict], fields: list[str] | None = None) -> None:
    fields = fields or list(rows[0])
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
