"""Explore an energy landscape: the exact energy of five 2-D patterns and its attractors.

The optimal denoiser of a training set {y_i} descends E_σ(x) = −log p_σ(x), with
p_σ = (1/N) Σ N(x; y_i, σ²I) (README, "The theory"). At a small noise level σ every
pattern is its own minimum (memorized); as σ grows, three nearby patterns merge into one
minimum at their centroid that is none of them (spurious), while the two isolated
patterns are still recalled. One panel per σ: E_σ as a heat map (dark = low), the
patterns (white stars) and the attractors found by retrieval from a grid of starts.

Run: python examples/energy_landscape.py --out runs/examples/landscape
"""

import argparse
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from memgen.memory.attractors import find_attractors
from memgen.memory.energy import empirical_energy
from memgen.probes.likelihood import square_grid
from memgen.report.figures import COLORS, save_figure

PATTERNS = torch.tensor([[-0.6, 0.55], [-0.82, 0.17], [-0.38, 0.17],  # a close triangle
                         [0.7, 0.6], [0.5, -0.7]], dtype=torch.float64)  # two loners
SIGMAS = (0.1, 0.25, 0.5)
EXTENT, GRID = 1.5, 151  # the figure covers [−1.5, 1.5]²


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(SIGMAS), figsize=(4 * len(SIGMAS), 4.2),
                             layout="constrained")
    for ax, sigma in zip(axes, SIGMAS):
        energy = empirical_energy(square_grid(EXTENT, GRID), PATTERNS, sigma)
        found = find_attractors(PATTERNS, square_grid(EXTENT, 30), sigma=sigma, tol=1e-9,
                                max_iter=5000)
        energy = energy.reshape(GRID, GRID).clamp(max=energy.quantile(0.8))  # keep the wells
        ax.imshow(energy.numpy(), origin="lower", cmap="magma",
                  extent=(-EXTENT, EXTENT, -EXTENT, EXTENT))
        ax.plot(*PATTERNS.T, "*", color="white", mec="black", ms=12, label="stored pattern")
        for kind in ("memorized", "spurious", "saddle"):
            points = found.points[found.kinds == kind]
            if len(points):
                ax.plot(*points.T, "o", mfc="none", mec=COLORS.get(kind, "cyan"), ms=14,
                        mew=2.5, label=f"{kind} attractor")
        counts = ", ".join(f"{found.count(k)} {k}" for k in ("memorized", "spurious"))
        ax.set_title(f"σ = {sigma}: {counts}", fontsize=10)
        ax.set(xticks=[], yticks=[])
        ax.legend(loc="lower left", fontsize=7)
        print(f"σ = {sigma}: {counts}; attractors at "
              + "  ".join(f"({x:.2f}, {y:.2f}) {k}"
                          for (x, y), k in zip(found.points.tolist(), found.kinds)))
    save_figure(fig, out / "landscape.png", dpi=110)
    print(f"wrote {out / 'landscape.png'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="Output folder.")
    main(parser.parse_args().out)
