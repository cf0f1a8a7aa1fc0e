"""Attractors of an associative memory: retrieval dynamics, merging, stability, basins.

A :class:`Memory` is a set of stored patterns with an energy (README, “The theory”)
whose inverse temperature is ``Memory.inverse_temperature``:
    kernel    E(x) = −(1/γ) log Σ exp(−γ‖x − y_i‖²)  (eq. 13, there with β; the empirical
              denoising energy at VE noise σ is this with γ = 1/(2σ²) and patterns a·y_i)
    dense_am  E(x) = ½‖x‖² − (1/β) log Σ exp(β xᵀy_i)  (eq. 10)
Both have the form E = c(½‖x‖² − …) whose minimiser map is x ← Σ_i w_i(x) y_i, the
fixed-point (CCCP) retrieval that never raises the energy; gradient descent is the
other dynamics offered. Endpoints that coincide are merged, then each attractor is
classified by the smallest Hessian eigenvalue (exact, via the Gram matrix of the
patterns that carry weight, or Lanczos when that is large) and by whether one stored
pattern dominates it: memorized, spurious (stable, not stored) or saddle.

"Stored" is decided by the retrieval weights w = softmax over patterns at the
attractor: a memory is an attractor whose weight is dominated by a single pattern
(w_max > 1/2). This is scale-free: a memory displaced by its neighbours' pull still
counts, while a mixture (two patterns merged into one well, w ≈ ½ each) or a point of
a dense ring (weight spread over many patterns) does not. An optional absolute
distance tolerance can be added on top.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh
from tqdm.auto import tqdm

from memgen.errors import UserError
from memgen.memory import energy as E
from memgen.neighbours import knn_search

_EXACT_EIG_MAX = 2000  # largest Gram matrix diagonalised exactly; Lanczos above
_EXACT_EIG_FLOPS = 2e9  # ... and only while forming it costs less than this
_BATCH_BUDGET = 256 * 2**20  # bytes for one (starts × patterns) block of weights


@dataclass(frozen=True)
class Memory:
    """Stored patterns (N, D) and the energy that retrieves them.

    inverse_temperature: the energy's own — the kernel's γ (1/(2σ²) at VE noise σ, see
    :meth:`from_sigma`) for kind "kernel", DenseAM's β for kind "dense_am".
    """

    patterns: torch.Tensor
    inverse_temperature: float
    kind: str = "kernel"

    def __post_init__(self):
        if self.kind not in _ENERGIES:
            raise UserError(f"unknown energy {self.kind!r}; known: {', '.join(_ENERGIES)}")
        if self.patterns.ndim != 2 or len(self.patterns) == 0:
            raise UserError("patterns must be a non-empty (N, D) tensor")
        if not self.inverse_temperature > 0:
            raise UserError(f"the inverse temperature must be positive, got "
                            f"{self.inverse_temperature}")

    @classmethod
    def from_sigma(cls, patterns: torch.Tensor, sigma: float, scale: float = 1.0) -> "Memory":
        """The empirical denoising energy at noise σ (VP scale a): kernel, γ = 1/(2σ²)."""
        return cls(scale * patterns, E.kernel_gamma(sigma), "kernel")

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        return _ENERGIES[self.kind][0](x, self.patterns, self.inverse_temperature)

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        return _ENERGIES[self.kind][1](x, self.patterns, self.inverse_temperature)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        return _ENERGIES[self.kind][2](x, self.patterns, self.inverse_temperature)

    def retrieval_step(self, x: torch.Tensor) -> torch.Tensor:
        """One fixed-point step x ← Σ_i w_i(x) y_i.

        The weights are the energy's own (float64 logits, float32 only where that cannot
        matter: see :mod:`memgen.memory.energy`); an expanded-form float32 addmm would put
        errors of γ·u·(‖x‖² + ‖y‖²) into every logit.
        """
        return self.weights(x) @ self.patterns

    @property
    def curvature(self) -> tuple[float, float]:
        """(c, κ) with ∇²E = c (I − κ Cov_w(y)): (2, 2γ) for the kernel, (1, β) for DenseAM."""
        t = self.inverse_temperature
        return (2.0, 2.0 * t) if self.kind == "kernel" else (1.0, t)


_ENERGIES = {
    "kernel": (E.kernel_energy, E.kernel_grad, E.kernel_weights),
    "dense_am": (E.dense_am_energy, E.dense_am_grad, E.dense_am_weights),
}


@dataclass(frozen=True)
class Retrieval:
    """Endpoints of the retrieval dynamics from every start."""

    endpoints: torch.Tensor  # (S, D)
    energies: torch.Tensor  # (S,)
    iterations: np.ndarray  # (S,) steps taken
    converged: np.ndarray  # (S,) bool: last step shorter than tol
    method: str
    tol: float
    max_iter: int


def retrieve(memory: Memory, starts: torch.Tensor, *, method: str = "fixed_point",
             tol: float = 1e-6, max_iter: int = 1000, step: float | None = None,
             callback=None, progress: bool = False) -> Retrieval:
    """Run retrieval from every start until the step is shorter than tol (or max_iter).

    fixed_point: x ← Σ_i w_i(x) y_i. gradient: x ← x − η∇E with η = step (default
    1/(2c), half the inverse of the Hessian's upper bound). callback(i, x, energies) is
    called after every step of every batch (for tests of monotone descent).
    """
    if method not in ("fixed_point", "gradient"):
        raise UserError(f"unknown retrieval method {method!r}; use fixed_point or gradient")
    eta = 1.0 / (2 * memory.curvature[0]) if step is None else step
    batch = max(1, _BATCH_BUDGET // (8 * len(memory.patterns)))  # logits are float64
    out, iters, done = [], [], []
    for b0 in tqdm(range(0, len(starts), batch), desc="retrieval", unit="batch",
                   disable=not progress or len(starts) <= batch):
        x, it, ok = _descend(memory, starts[b0:b0 + batch].clone(), method, eta, tol, max_iter,
                             callback)
        out.append(x), iters.append(it), done.append(ok)
    endpoints = torch.cat(out)
    return Retrieval(endpoints, memory.energy(endpoints), np.concatenate(iters),
                     np.concatenate(done), method, tol, max_iter)


def _descend(memory, x, method, eta, tol, max_iter, callback):
    iterations = np.zeros(len(x), dtype=np.int64)
    active = torch.ones(len(x), dtype=torch.bool, device=x.device)
    for i in range(max_iter):
        xa = x[active]
        if method == "fixed_point":
            new = memory.retrieval_step(xa)
        else:
            new = xa - eta * memory.grad(xa)
        moved = (new - xa).norm(dim=1)
        x[active] = new
        iterations[active.cpu().numpy()] += 1
        if callback is not None:
            callback(i, x, memory.energy(x))
        still = moved >= tol
        active[active.clone()] = still
        if not active.any():
            break
    return x, iterations, ~active.cpu().numpy()


def merge_endpoints(points: torch.Tensor, energies: torch.Tensor, tol: float):
    """Greedy leader clustering: the lowest-energy unassigned endpoint becomes a
    representative and takes every endpoint within tol. Returns (rep indices (A,),
    assignment (S,) into 0..A−1)."""
    order = torch.argsort(energies).cpu().numpy()
    assignment = np.full(len(points), -1, dtype=np.int64)
    reps: list[int] = []
    for i in order:
        if assignment[i] >= 0:
            continue
        near = ((points - points[i]).norm(dim=1) <= tol).cpu().numpy() & (assignment < 0)
        assignment[near] = len(reps)
        reps.append(int(i))
    return np.array(reps, dtype=np.int64), assignment


def min_hessian_eigenvalue(memory: Memory, x: torch.Tensor, weight_floor: float = 1e-12
                           ) -> np.ndarray:
    """Smallest eigenvalue of ∇²E = c(I − κ Cov_w(y)) at each row of x: (B,).

    Cov_w = ỸᵀỸ with Ỹ = diag(√w)(Y − m) over the patterns whose weight exceeds
    weight_floor·max w, so its top eigenvalue is that of the small Gram matrix ỸỸᵀ
    (exact), or of ỸᵀỸ by Lanczos when both sides exceed 2,000. As Cov_w is positive
    semi-definite, λ_min = c(1 − κ λ_max(Cov_w)) ≤ c.
    """
    c, kappa = memory.curvature
    out = np.empty(len(x))
    for b, w in enumerate(memory.weights(x.to(memory.patterns.dtype)).double()):
        keep = w > weight_floor * w.max()
        y = memory.patterns[keep].double()
        wk = w[keep] / w[keep].sum()
        yt = wk.sqrt().unsqueeze(1) * (y - wk @ y)  # (n_active, D)
        out[b] = c * (1.0 - kappa * _top_eigenvalue(yt))
    return out


def _top_eigenvalue(yt: torch.Tensor) -> float:
    """Largest eigenvalue of ỸᵀỸ: the smaller Gram matrix diagonalised, or Lanczos (ARPACK)
    on v ↦ Ỹᵀ(Ỹv) when that Gram matrix is large or costly to form."""
    n, d = yt.shape
    if min(n, d) <= _EXACT_EIG_MAX and n * d * min(n, d) <= _EXACT_EIG_FLOPS:
        gram = yt @ yt.T if n <= d else yt.T @ yt
        return float(torch.linalg.eigvalsh(gram)[-1])
    a = yt.cpu().numpy()
    op = LinearOperator((d, d), matvec=lambda v: a.T @ (a @ v), dtype=np.float64)
    return float(eigsh(op, k=1, which="LA", return_eigenvectors=False)[0])


@dataclass(frozen=True)
class Attractors:
    """Merged endpoints of retrieval, classified (A attractors, S starts)."""

    points: torch.Tensor  # (A, D)
    energies: np.ndarray  # (A,)
    kinds: np.ndarray  # (A,) str: memorized | spurious | saddle
    min_eigenvalue: np.ndarray  # (A,) smallest Hessian eigenvalue
    basin: np.ndarray  # (A,) share of starts that ended here
    nearest_pattern: np.ndarray  # (A,) index of the closest stored pattern
    pattern_distance: np.ndarray  # (A,) its distance
    max_weight: np.ndarray  # (A,) largest retrieval weight w_i at the attractor
    assignment: np.ndarray  # (S,) attractor reached from each start
    retrieval: Retrieval

    def count(self, kind: str) -> int:
        return int((self.kinds == kind).sum())

    def share(self, kind: str) -> float:
        """Share of starts that ended at an attractor of this kind."""
        return float(self.basin[self.kinds == kind].sum())


def as_memory(memory: Memory | torch.Tensor, *, inverse_temperature: float | None = None,
              sigma: float | None = None, scale: float = 1.0, kind: str = "kernel") -> Memory:
    """A Memory as given, or built from (N, D) patterns with exactly one of
    inverse_temperature (γ for the kernel, β for dense_am) or sigma."""
    if isinstance(memory, Memory):
        if inverse_temperature is not None or sigma is not None:
            raise UserError("inverse_temperature and sigma come with patterns, not with a "
                            "Memory")
        return memory
    if (inverse_temperature is None) == (sigma is None):
        raise UserError("give exactly one of inverse_temperature or sigma (noise level)")
    if sigma is not None:
        if kind != "kernel":
            raise UserError("sigma defines the empirical (kernel) energy; use "
                            "inverse_temperature for dense_am")
        return Memory.from_sigma(memory, sigma, scale)
    return Memory(scale * memory, inverse_temperature, kind)


def find_attractors(memory: Memory | torch.Tensor, starts: torch.Tensor, *,
                    inverse_temperature: float | None = None, sigma: float | None = None,
                    scale: float = 1.0,
                    kind: str = "kernel", method: str = "fixed_point", tol: float = 1e-7,
                    max_iter: int = 2000, merge_tol: float | None = None,
                    store_weight: float = 0.5, store_tol: float | None = None,
                    eig_tol: float = 1e-6, progress: bool = False) -> Attractors:
    """Retrieve from every start, merge coinciding endpoints, classify the attractors.

    memory: a :class:`Memory`, or (N, D) patterns with inverse_temperature= (the kernel's
    γ or DenseAM's β, by kind) or sigma= (the empirical energy −log p_σ, VP scale a =
    scale).

    merge_tol: endpoints closer than this are one attractor (default 1e-3 × the
    patterns' RMS norm, or 1000·tol if larger). An attractor is memorized when one
    pattern's retrieval weight exceeds store_weight (and, if store_tol is given, that
    pattern lies within store_tol); saddle when λ_min < −eig_tol·c; else spurious.
    """
    memory = as_memory(memory, inverse_temperature=inverse_temperature, sigma=sigma,
                       scale=scale, kind=kind)
    size = float(memory.patterns.double().square().sum(1).mean().sqrt()) or 1.0
    merge_tol = max(1e-3 * size, 1e3 * tol) if merge_tol is None else merge_tol
    run = retrieve(memory, starts, method=method, tol=tol, max_iter=max_iter, progress=progress)
    reps, assignment = merge_endpoints(run.endpoints, run.energies, merge_tol)
    points = run.endpoints[reps]
    near = knn_search(points, memory.patterns, 1)
    dist = near.dist[:, 0].cpu().numpy()
    w_max = memory.weights(points).max(dim=1).values.double().cpu().numpy()
    stored = (w_max > store_weight) & (dist <= (np.inf if store_tol is None else store_tol))
    lam = min_hessian_eigenvalue(memory, points)
    kinds = np.where(lam < -eig_tol * memory.curvature[0], "saddle",
                     np.where(stored, "memorized", "spurious"))
    basin = np.bincount(assignment, minlength=len(reps)) / len(starts)
    return Attractors(points, run.energies[reps].cpu().numpy(), kinds, lam, basin,
                      near.idx[:, 0].cpu().numpy(), dist, w_max, assignment, run)


# ---------------------------------------------------------------------- barriers


@dataclass(frozen=True)
class MinimumEnergyPath:
    """A minimum-energy path between two minima and its energy profile."""

    points: torch.Tensor  # (n_images, D), points[0] = a, points[-1] = b
    energies: np.ndarray  # (n_images,)

    @property
    def barrier(self) -> float:
        """Energy of the path's highest point above the higher of its two ends."""
        return float(self.energies.max() - max(self.energies[0], self.energies[-1]))


def minimum_energy_path(memory: Memory, a: torch.Tensor, b: torch.Tensor, n_images: int = 41,
                        n_iter: int = 400, step: float | None = None) -> MinimumEnergyPath:
    """Zero-temperature string method (E, Ren & Vanden-Eijnden 2007) between minima a, b.

    The straight segment is relaxed by gradient steps on its interior images, each
    followed by reparametrisation to equal arc length; the highest image then sits at
    the saddle to O(1/n_images).
    """
    eta = 1.0 / (4 * memory.curvature[0]) if step is None else step
    t = torch.linspace(0, 1, n_images, dtype=memory.patterns.dtype, device=a.device)[:, None]
    path = a + t * (b - a)
    for _ in range(n_iter):
        path[1:-1] -= eta * memory.grad(path[1:-1])
        path = _equal_arc_length(path)
    return MinimumEnergyPath(path, memory.energy(path).cpu().numpy())


def _equal_arc_length(path: torch.Tensor) -> torch.Tensor:
    seg = (path[1:] - path[:-1]).norm(dim=1)
    s = torch.cat([seg.new_zeros(1), seg.cumsum(0)])
    if s[-1] == 0:
        return path
    s = (s / s[-1]).cpu().numpy()
    u = np.linspace(0, 1, len(path))
    p = path.cpu().numpy()
    out = np.stack([np.interp(u, s, p[:, j]) for j in range(p.shape[1])], axis=1)
    return torch.from_numpy(out).to(path)


def ring_barriers(memory: Memory, found: Attractors, **path_options) -> np.ndarray:
    """Barriers between angularly neighbouring stable attractors of 2D data (A,) or empty.

    Attractors (saddles excluded) are ordered by angle about the origin; entry i is the
    barrier of the path from attractor i to its counter-clockwise neighbour.
    """
    if found.points.shape[1] != 2:
        raise UserError("ring barriers are defined for 2D data")
    stable = found.points[found.kinds != "saddle"]
    if len(stable) < 2:
        return np.array([])
    stable = stable[torch.argsort(torch.atan2(stable[:, 1], stable[:, 0]))]
    pairs = [(stable[i], stable[(i + 1) % len(stable)]) for i in range(len(stable))]
    if len(stable) == 2:
        pairs = pairs[:1]  # the two arcs share one pair of ends; keep the one path found
    return np.array([minimum_energy_path(memory, a, b, **path_options).barrier
                     for a, b in pairs])


def ring_energy_spread(memory: Memory, radius: float = 1.0, n: int = 720) -> float:
    """max − min of the energy around the circle of the given radius (2D data)."""
    theta = torch.linspace(0, 2 * np.pi, n + 1, dtype=memory.patterns.dtype)[:-1]
    ring = radius * torch.stack([theta.cos(), theta.sin()], 1).to(memory.patterns.device)
    e = memory.energy(ring)
    return float(e.max() - e.min())
