"""A report.html with every figure type of a sweep, drawn from made-up numbers (seconds, no
sweep): the fractions, the 2D samples, neighbour and sample grids, the phase map, the
learned landscape and the basin and curvature distributions, with every table filled."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from memgen.metrics.rules import LABEL_NAMES
from memgen.report.figures import (plot_by_label, plot_fractions, plot_neighbours, plot_phase_map,
                                   plot_sample_grid, plot_samples_2d, save_figure)
from memgen.report.html import write_report
from memgen.report.landscapes import plot_learned_landscape

KS = (2, 8, 64)
FRACTIONS = np.array([[0.9, 0.05, 0.05], [0.5, 0.2, 0.3], [0.0, 0.1, 0.9]])


@dataclass
class Result:
    """What the report and fractions.csv read of a StageResult: K, its summary, its
    stage timings and its training steps."""

    K: int
    summary: dict
    timings: dict = field(default_factory=dict)
    steps: int | None = None

    def seconds(self) -> dict:
        return self.timings


def summary(fractions) -> dict:
    q = {"precision": 0.9, "recall": 0.7, "density": 0.95, "coverage": 0.6, "k": 5,
         "n_real": 200, "n_fake": 200,
         "precision_by_label": {"memorized": 1.0, "spurious": None, "generalized": 0.85},
         "baseline": {"precision": 0.97, "recall": 0.98, "density": 1.0, "coverage": 0.9}}
    return {"fractions": dict(zip(LABEL_NAMES, map(float, fractions))),
            "ci95": {n: [max(0.0, f - 0.05), min(1.0, f + 0.05)]
                     for n, f in zip(LABEL_NAMES, fractions)},
            "n_eval": 200, "n_synth": 800, "rule": "paper", "delta_m": 1 / 3,
            "delta_s": 0.3, "quality": q,
            "null": {"fractions": {"memorized": 0.01, "spurious": 0.12, "generalized": 0.87},
                     "n_eval": 200, "n_synth": 400}}


def results() -> list[Result]:
    timings = {"train": 12.0, "eval": 1.5, "synth": 3.0, "classify": 0.4}
    return [Result(K, summary(f), dict(timings, **({"analysis": 2.0} if K == 64 else {})))
            for K, f in zip(KS, FRACTIONS)]


def figures(out: Path) -> list[Path]:
    """Every figure type of a sweep's report, written into ``out``."""
    rng = np.random.default_rng(0)
    K = np.array(KS)
    drawn = {
        "fractions.png": plot_fractions(K, FRACTIONS, FRACTIONS - 0.05, FRACTIONS + 0.05,
                                        {"MC": 2, "SC": None, "GC": 64},
                                        null=np.full((3, 3), 0.1), title="every figure"),
        "samples.png": plot_samples_2d([_panel_2d(k, rng) for k in KS]),
        "neighbours-K64.png": _neighbours(rng),
        "samples-K64.png": plot_sample_grid(rng.uniform(-1, 1, (64, 1, 8, 8)),
                                            rng.integers(0, 3, 64), title="K = 64"),
        "phase_map.png": plot_phase_map(KS, [100, 1000], rng.dirichlet(np.ones(3), (3, 2)),
                                        tau=[100, 1000, None], title="every figure"),
        "learned_landscape.png": plot_learned_landscape([_landscape_row(2), _landscape_row(9)],
                                                        extent=1.6, sigma=0.387),
        "critical.png": plot_by_label(_by_label(rng, positive=True), "critical σ*",
                                      title="basins", log=True),
        "curvature.png": plot_by_label(_by_label(rng), "λ_min · σ²", title="curvature"),
    }
    for name, fig in drawn.items():
        save_figure(fig, out / name, dpi=110)
    return [out / name for name in drawn]


def write_every_figure_report(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    caps = {"MC": {"value": 2, "ci95": [2, 8], "reached_share": 0.97, "at_edge": True},
            "SC": {"value": None, "reason": "not above null", "reached_share": 0.1},
            "GC": {"value": 64, "ci95": [64, 64], "reached_share": 1.0, "at_edge": True},
            "epsilon": 0.1}
    timescale = {"steps": [100, 1000], "threshold": 0.5, "tau_mem": {"2": 100, "8": 1000,
                 "64": None}, "tau_mem_censored": [2], "fit": None, "fit_note": "too few K"}
    provenance = {"command": "memgen sweep configs/every-figure-type-of-a-report.yaml --out "
                             + "/a/rather/long/path/" * 6, "memgen": "0", "git_commit": "f" * 40,
                  "python": "3.11", "torch": "2", "numpy": "2",
                  "inputs": {"config": {"path": "/x/" * 30 + "c.yaml", "sha256": "a" * 64},
                             "data": {"name": "digits", "fingerprint": "b" * 16,
                                      "shape": [1797, 1, 8, 8]}}}
    config = {"name": "every figure", "measure": {"rule": "paper", "epsilon": 0.1},
              "analysis": {"per_label": 5}, "notes": "made-up numbers"}
    path = out / "report.html"
    write_report(path, "every figure", config, caps, results(), figures(out),
                 timescale=timescale, provenance=provenance)
    return path


def _panel_2d(K: int, rng) -> dict:
    angle = rng.uniform(0, 2 * np.pi, K)
    samples = np.stack([np.cos(a := rng.uniform(0, 2 * np.pi, 60)), np.sin(a)], 1)
    return {"K": K, "train": np.stack([np.cos(angle), np.sin(angle)], 1), "samples": samples,
            "labels": rng.integers(0, 3, 60)}


def _neighbours(rng):
    n, k = 12, 5
    images = rng.uniform(-1, 1, (n, 1, 8, 8))
    idx = np.tile(np.arange(k), (n, 1))
    dist = np.sort(rng.uniform(0.5, 5, (n, k)), axis=1)
    labels = np.arange(n) % 3
    chosen = {name: [i for i in range(n) if labels[i] == c][:2]
              for c, name in enumerate(LABEL_NAMES)}
    return plot_neighbours(images, images, images, idx, idx, labels, chosen, dist, dist,
                           title="K = 64")


def _landscape_row(K: int) -> dict:
    g = np.linspace(-1.6, 1.6, 25)
    energy = np.add.outer(g**2, g**2)
    return {"K": K, "exact": energy, "learned": energy * 1.1, "train": np.eye(2)[:2],
            "centres": np.eye(2), "counts": np.array([5, 3]),
            "memorized": np.array([True, False]), "exact_attractors": np.eye(2),
            "exact_kinds": np.array(["memorized", "spurious"])}


def _by_label(rng, positive: bool = False) -> dict:
    draw = (lambda: rng.lognormal(0, 0.5, 5)) if positive else (lambda: rng.normal(0.5, 0.3, 5))
    return {f"K = {K}": {name: draw() for name in LABEL_NAMES} for K in KS}
