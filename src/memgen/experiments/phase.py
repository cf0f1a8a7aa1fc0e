"""Phase sweeps of the exact empirical energy over the load K and the noise level σ.

For every (σ, K): the first K patterns of the seeded split, the energy −log p_σ
(kernel form with γ = 1/(2σ²), phase.csv's ``beta`` column), retrieval from samples of
p_σ (or other starts), the attractors and their kinds, and the paper's eqs. 4–6 labels
applied to the retrieval endpoints (endpoints as the evaluated set and as their own
synthetic set, patterns as the training set). Orchestration only: the math is in
``attractors`` and ``metrics``.
"""

from __future__ import annotations

import csv
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from memgen.data import circle_pool, default_split_seed, load_idx_images, nested_indices
from memgen.errors import UserError
from memgen.io import read_csv_rows, write_json
from memgen.memory.attractors import Memory, find_attractors, ring_barriers, ring_energy_spread
from memgen.metrics.nearest import find_neighbours
from memgen.metrics.rules import DEFAULT_RULE, apply_rule, make_rule
from memgen.probes.starts import make_starts
from memgen.report.figures import plot_phase, save_figure

PHASE_DATA = ("circle", "fmnist")
COLUMNS = ("sigma", "beta", "K", "n_starts", "n_attractors", "n_memorized", "n_spurious",
           "n_saddle", "share_memorized", "share_spurious", "share_saddle", "mean_barrier",
           "energy_spread", "rule_memorized", "rule_spurious", "rule_generalized",
           "mean_iterations", "converged_share", "seconds")


@dataclass(frozen=True)
class PhaseConfig:
    data: str = "circle"
    sigmas: tuple[float, ...] = (0.158,)
    Ks: tuple[int, ...] = (2, 4, 9, 16, 32, 64, 128, 256, 1000)
    n_starts: int = 1024
    starts: str = "noisy"  # noisy (samples of p_σ) | box | annealed
    method: str = "fixed_point"
    tol: float = 1e-6  # retrieval stops when a step is shorter than tol × RMS pattern norm
    max_iter: int = 2000
    seed: int = 0
    split_seed: int | None = None  # None: default_split_seed(data), 42 for the circle pool
    data_root: str | None = None
    dtype: str = "float64"


def load_patterns(config: PhaseConfig) -> np.ndarray:
    """The pool that K patterns are drawn from: (N, D) float."""
    if config.data == "circle":
        return circle_pool(60_000, seed=9)
    if config.data == "fmnist":
        images = load_idx_images("fashion-mnist", "train", config.data_root).images
        return images.reshape(len(images), -1)
    raise UserError(f"unknown phase data {config.data!r}; known: {', '.join(PHASE_DATA)}")


def validate(config: PhaseConfig, pool_size: int) -> None:
    if not config.Ks or not config.sigmas:
        raise UserError("give at least one K and one sigma")
    bad = [K for K in config.Ks if not 2 <= K <= pool_size]
    if bad:
        raise UserError(f"K must lie in [2, {pool_size}] for {config.data}; got {bad}")
    if any(not s > 0 for s in config.sigmas):
        raise UserError("every sigma must be positive")
    if config.n_starts < 1:
        raise UserError("n_starts must be at least 1")


def run_phase(config: PhaseConfig, progress: bool = False) -> list[dict]:
    """One row (dict of COLUMNS) per (σ, K)."""
    pool = load_patterns(config)
    validate(config, len(pool))
    split_seed = config.split_seed
    if split_seed is None:
        split_seed = default_split_seed(config.data)
    dtype = getattr(torch, config.dtype)
    grid = [(s, K) for s in config.sigmas for K in config.Ks]
    rows = []
    for sigma, K in tqdm(grid, desc="phase", unit="point", disable=not progress):
        patterns = torch.from_numpy(pool[nested_indices(len(pool), K, split_seed)]).to(dtype)
        rows.append(phase_point(patterns, sigma, config))
    return rows


def phase_point(patterns: torch.Tensor, sigma: float, config: PhaseConfig) -> dict:
    """Attractor statistics of −log p_σ for one pattern set."""
    t0 = time.perf_counter()
    memory = Memory.from_sigma(patterns, sigma)
    generator = torch.Generator().manual_seed(config.seed)
    starts = make_starts(config.starts, patterns, config.n_starts, sigma, generator)
    scale = float(patterns.square().sum(1).mean().sqrt())
    found = find_attractors(memory, starts, method=config.method, tol=config.tol * scale,
                            max_iter=config.max_iter)
    two_d = patterns.shape[1] == 2
    barriers = ring_barriers(memory, found) if two_d else np.array([])
    near = find_neighbours(found.retrieval.endpoints, patterns)
    labels = apply_rule(near.train_dist, near.synth_dist, make_rule(DEFAULT_RULE))
    run = found.retrieval
    return {
        "sigma": sigma, "beta": memory.inverse_temperature,  # the kernel's γ = 1/(2σ²)
        "K": len(patterns), "n_starts": len(starts),
        "n_attractors": len(found.points), "n_memorized": found.count("memorized"),
        "n_spurious": found.count("spurious"), "n_saddle": found.count("saddle"),
        "share_memorized": found.share("memorized"), "share_spurious": found.share("spurious"),
        "share_saddle": found.share("saddle"),
        "mean_barrier": float(barriers.mean()) if len(barriers) else float("nan"),
        "energy_spread": ring_energy_spread(memory) if two_d else float("nan"),
        "rule_memorized": float(np.mean(labels == 0)),
        "rule_spurious": float(np.mean(labels == 1)),
        "rule_generalized": float(np.mean(labels == 2)),
        "mean_iterations": float(run.iterations.mean()),
        "converged_share": float(run.converged.mean()),
        "seconds": time.perf_counter() - t0,
    }


def write_phase(out: Path, rows: list[dict], config: PhaseConfig) -> None:
    """phase.csv, phase.json (config) and the figures into an existing folder."""
    with (out / "phase.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: _fmt(row[k]) for k in COLUMNS} for row in rows)
    write_json(out / "phase.json", {"config": asdict(config)})
    save_figure(plot_phase(rows, title=f"{config.data}: attractors of −log p_σ"),
                out / "phase.png", 150)


def read_phase(path: str | Path) -> list[dict]:
    """Rows of a phase.csv with numbers parsed (counts as int, the rest as float)."""
    path = Path(path)
    rows = read_csv_rows(path)
    if not rows or set(COLUMNS) - set(rows[0]):
        raise UserError(f"{path} is not a phase.csv (columns {', '.join(COLUMNS)})")
    counts = {"K", "n_starts", "n_attractors", "n_memorized", "n_spurious", "n_saddle"}
    try:
        return [{k: int(r[k]) if k in counts else float(r[k]) for k in COLUMNS} for r in rows]
    except ValueError as err:
        raise UserError(f"{path}: non-numeric entry ({err})") from None


def _fmt(value):
    return f"{value:.6g}" if isinstance(value, float) else value
