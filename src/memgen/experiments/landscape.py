"""2D energy landscapes of the unit-circle data (project page, Fig. 2).

One panel per K: the kernel energy −(1/γ) log Σ exp(−γ‖x − y_i‖²) of the first K
points of the circle pool on a grid, its score field, the training points and the
attractors found by retrieval from a grid of starts; plus the continuum panel
E(R) = R² + 1 − (1/γ) log I0(2γR) whose minimum is the whole ring R = R*. γ
(``LandscapeConfig.gamma``, ``memgen landscape --beta``) is the kernel's inverse
temperature, 1/(2σ²) at VE noise σ (the paper's eq. 13 writes it β).
Orchestration only: the math is in ``energy`` and ``attractors``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from memgen.data import CIRCLE_SPLIT_SEED, circle_pool, nested_indices
from memgen.diffusion.denoisers import ScoreDenoiser
from memgen.diffusion.loaders import load_denoiser
from memgen.diffusion.samplers import StackedGenerator, initial_noise, sample_euler_maruyama
from memgen.errors import UserError
from memgen.io import atomic_file, load_samples
from memgen.memory import energy as E
from memgen.memory.attractors import Attractors, Memory, find_attractors
from memgen.probes.likelihood import (EmpiricalPrior, learned_attractors, learned_energy_grid,
                                      square_grid)
from memgen.report.figures import save_figure
from memgen.report.landscapes import plot_landscape, plot_learned_landscape

EXTENT = 1.6  # the grid covers [−EXTENT, EXTENT]²


@dataclass(frozen=True)
class LandscapeConfig:
    Ks: tuple[int, ...] = (2, 9, 1000)
    gamma: float = 20.0  # the kernel's γ (eq. 13's β; = 1/(2σ²)); the CLI's --beta
    grid: int = 161  # energy grid points per axis
    arrows: int = 21  # score arrows per axis
    starts_per_axis: int = 40  # retrieval starts on a regular grid
    split_seed: int = CIRCLE_SPLIT_SEED  # subsets of the 60,000-point pool (seed 9)
    max_iter: int = 5000


@dataclass(frozen=True)
class Panel:
    """What one panel shows (computed, not drawn)."""

    title: str
    energy: np.ndarray  # (grid, grid), rows along y
    score: np.ndarray  # (arrows, arrows, 2): −∇E
    patterns: np.ndarray | None  # (K, 2)
    attractors: np.ndarray  # (A, 2)
    attractor_energy: np.ndarray  # (A,)
    kinds: np.ndarray  # (A,)
    ring_radius: float | None = None  # continuum: the radius of the minimum ring


def discrete_panel(patterns: torch.Tensor, config: LandscapeConfig) -> tuple[Panel, Attractors]:
    memory = Memory(patterns, config.gamma, "kernel")
    found = find_attractors(memory, square_grid(EXTENT, config.starts_per_axis), tol=1e-9,
                            max_iter=config.max_iter)
    g, a = config.grid, config.arrows
    panel = Panel(
        title=f"K = {len(patterns)}",
        energy=memory.energy(square_grid(EXTENT, g)).reshape(g, g).numpy(),
        score=(-memory.grad(square_grid(EXTENT, a))).reshape(a, a, 2).numpy(),
        patterns=patterns.numpy(), attractors=found.points.numpy(),
        attractor_energy=found.energies, kinds=found.kinds)
    return panel, found


def continuum_panel(config: LandscapeConfig) -> Panel:
    g, a = config.grid, config.arrows
    radius = E.circle_ring_radius(config.gamma)
    energy = E.circle_energy(square_grid(EXTENT, g).norm(dim=1), config.gamma).reshape(g, g)
    score = E.circle_score(square_grid(EXTENT, a), config.gamma)
    ring_energy = float(E.circle_energy(torch.tensor(radius, dtype=torch.float64), config.gamma))
    return Panel(title="continuum (K → ∞)", energy=energy.numpy(),
                 score=score.reshape(a, a, 2).numpy(), patterns=None,
                 attractors=np.array([[radius, 0.0]]), attractor_energy=np.array([ring_energy]),
                 kinds=np.array(["ring"]), ring_radius=radius)


def run_landscape(config: LandscapeConfig) -> list[Panel]:
    pool = circle_pool(60_000, seed=9)
    bad = [K for K in config.Ks if not 1 <= K <= len(pool)]
    if bad or not config.Ks:
        raise UserError(f"K must lie in [1, {len(pool)}]; got {bad or 'none'}")
    if not config.gamma > 0:
        raise UserError(f"beta must be positive, got {config.gamma}")
    panels = []
    for K in config.Ks:
        patterns = torch.from_numpy(pool[nested_indices(len(pool), K, config.split_seed)])
        panels.append(discrete_panel(patterns.double(), config)[0])
    return panels + [continuum_panel(config)]


def write_landscape(out: Path, panels: list[Panel], config: LandscapeConfig) -> None:
    """attractors.csv (K, x, y, energy, kind) and landscape.png into an existing folder."""
    with (out / "attractors.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["K", "x", "y", "energy", "kind"])
        for K, panel in zip([*config.Ks, "continuum"], panels):
            for (x, y), e, kind in zip(panel.attractors, panel.attractor_energy, panel.kinds):
                writer.writerow([K, f"{x:.6g}", f"{y:.6g}", f"{e:.6g}", kind])
    save_figure(plot_landscape(panels, EXTENT, beta=config.gamma), out / "landscape.png", 130)


# ------------------------------------------------------------------ trained models

LEARNED_SIGMA = 0.387  # σ(t = 0.15) of the toy's VE SDE: where the paper shows the energy


def learned_row(denoiser, train: np.ndarray, samples: np.ndarray, *, K: int,
                sigma: float = LEARNED_SIGMA, sample_sigma: float = 0.032,
                resolution: int = 100, rtol: float = 1e-3) -> dict:
    """One row of ``plot_learned_landscape``: a trained 2D model beside the exact energy.

    learned: −log p_σ of the model by the PF-ODE with exact divergence from σ up to 1,
    where the prior is the exact p_1 of the training set (a trained model is close to
    the exact denoiser at large σ); exact: −log p_σ of the training set; both absolute, so
    they share one colour scale. Learned attractors: mean-shift clusters of the model's
    samples (drawn down to ``sample_sigma``); exact attractors: retrieval at σ.
    """
    patterns = torch.from_numpy(np.asarray(train, dtype=np.float64))
    grid = learned_energy_grid(denoiser, EXTENT, resolution, sigma, 1.0,
                               EmpiricalPrior(patterns, 1.0), rtol=rtol, atol=rtol)
    exact = E.empirical_energy(square_grid(EXTENT, resolution), patterns, sigma)
    found = learned_attractors(torch.from_numpy(np.asarray(samples, dtype=np.float64)),
                               sample_sigma, patterns)
    memory = Memory(patterns, E.kernel_gamma(sigma), "kernel")
    stable = find_attractors(memory, square_grid(EXTENT, 40), tol=1e-9, max_iter=5000)
    return {"K": K, "exact": exact.reshape(resolution, resolution).numpy(),
            "learned": grid.energy.numpy(), "train": np.asarray(train),
            "centres": found.centres.numpy(), "counts": found.counts,
            "memorized": found.memorized,
            "exact_attractors": stable.points.numpy(),
            "exact_kinds": np.asarray(stable.kinds, dtype=str),
            "ode_ok": bool(grid.likelihood.success)}


def write_learned(out: Path, rows: list[dict], sigma: float) -> None:
    """learned_attractors.csv (K, x, y, count, memorized) and learned_landscape.png."""
    with atomic_file(out / "learned_attractors.csv") as tmp:
        with tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["K", "x", "y", "count", "memorized"])
            for row in rows:
                for (x, y), n, mem in zip(row["centres"], row["counts"], row["memorized"]):
                    writer.writerow([row["K"], f"{x:.6g}", f"{y:.6g}", int(n), int(mem)])
    save_figure(plot_learned_landscape(rows, EXTENT, sigma), out / "learned_landscape.png", 110)


def checkpoint_rows(checkpoints, *, sigma: float = LEARNED_SIGMA, n_samples: int = 2000,
                    seed: int = 0, resolution: int = 100) -> list[dict]:
    """``learned_row`` for trained toy checkpoints (VE score models of ``memgen train``),
    each with the train.npz beside it and ``n_samples`` Euler–Maruyama samples (1,000
    steps from σ = 1 down to σ(t_min) ≈ 0.032, no final denoising)."""
    rows = []
    for path in checkpoints:
        den = load_denoiser(checkpoint=path).denoiser
        if not isinstance(den, ScoreDenoiser):
            raise UserError(f"{path}: learned landscapes need a 2D VE score model "
                             "(memgen train --preset toy-mlp)")
        train = load_samples(Path(path).with_name("train.npz"), "train.npz")
        if train.ndim != 2 or train.shape[1] != 2:
            raise UserError(f"{path}: the training set is not 2D ({train.shape[1:]})")
        sigmas = den.schedule.sigmas(1000)
        gen = StackedGenerator([(seed, i) for i in range(n_samples)])
        x = initial_noise((n_samples, 2), float(sigmas[0]), gen)
        samples = sample_euler_maruyama(den, x, sigmas, generator=gen).numpy()
        rows.append(learned_row(den, train, samples, K=len(train), sigma=sigma,
                                sample_sigma=float(sigmas[-1]), resolution=resolution))
    return rows
