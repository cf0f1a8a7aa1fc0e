"""Energy-landscape figures of 2D data: heat maps with colour bars, score arrows, stored
points and attractors, and one legend that names every marker. No metrics here."""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

# The markers sit on a dark heat map; so does their legend (white text on dark grey).
DARK_LEGEND = {"facecolor": "0.22", "edgecolor": "0.22", "labelcolor": "white",
               "framealpha": 1.0, "fontsize": 8}


def plot_landscape(panels: Sequence, extent: float, beta: float):
    """Project-page Fig. 2: energy heat map (dark = low; each panel its own scale, clipped
    at its 90th percentile, with its colour bar), score arrows (−∇E, downhill), the unit
    circle, training points (red stars), attractors (yellow crosses, annotated with their
    energy above the panel's lowest attractor; spurious ones circled; saddles as cyan x)
    and, for the continuum, the minimum ring; one legend below the panels."""
    fig, axes = plt.subplots(1, len(panels), figsize=(3.9 * len(panels), 4.7),
                             layout="constrained", squeeze=False)
    axis = np.linspace(-extent, extent, panels[0].score.shape[0])
    theta = np.linspace(0, 2 * np.pi, 400)
    for ax, panel in zip(axes[0], panels):
        lo, hi = np.percentile(panel.energy, [0, 90])
        image = ax.imshow(np.clip(panel.energy, lo, hi), origin="lower", cmap="magma",
                          extent=(-extent, extent, -extent, extent))
        bar = fig.colorbar(image, ax=ax, shrink=0.82, pad=0.02)
        bar.ax.tick_params(labelsize=7)
        u, v = panel.score[..., 0], panel.score[..., 1]
        norm = np.hypot(u, v) + 1e-12
        ax.quiver(axis, axis, u / norm, v / norm, color="white", alpha=0.45, scale=30,
                  width=0.004)
        ax.plot(np.cos(theta), np.sin(theta), "--", color="white", lw=0.8, alpha=0.7)
        if panel.patterns is not None:
            ax.plot(*panel.patterns.T, "*", color="red", ms=9 if len(panel.patterns) < 50 else 2,
                    mec="darkred", mew=0.4)
        _draw_attractors(ax, panel)
        ax.set(xlim=(-extent, extent), ylim=(-extent, extent), xticks=[], yticks=[])
        ring = "" if panel.ring_radius is None else f": ring R* = {panel.ring_radius:.3f}"
        ax.set_title(panel.title + ring, fontsize=10)
    bar.set_label("energy E (clipped at its 90th percentile)", fontsize=8)
    fig.legend(handles=_landscape_handles(panels), loc="outside lower center", ncol=4,
               **DARK_LEGEND)
    fig.suptitle(f"kernel energy, β = {beta:g} (dark = low energy)", fontsize=10)
    return fig


def _landscape_handles(panels: Sequence) -> list:
    """Legend entries for the markers that some panel draws."""
    kinds = {k for p in panels if p.ring_radius is None for k in p.kinds}
    handles = [Line2D([], [], ls="", marker=r"$\rightarrow$", ms=10, color="white",
                      label="arrows: score −∇E (downhill)"),
               Line2D([], [], ls="--", color="white", lw=0.8, label="unit circle")]
    if any(p.patterns is not None for p in panels):
        handles.append(Line2D([], [], ls="", marker="*", ms=9, color="red", mec="darkred",
                              label="training point (stored)"))
    if kinds - {"saddle"}:
        handles.append(Line2D([], [], ls="", marker="x", ms=8, mew=2, color="yellow",
                              label="attractor (number: energy\nabove the panel's lowest)"))
    if "spurious" in kinds:
        handles.append(Line2D([], [], ls="", marker="o", ms=12, mfc="none", mec="yellow",
                              label="circled: spurious attractor\n(no stored point)"))
    if "saddle" in kinds:
        handles.append(Line2D([], [], ls="", marker="x", ms=6, mew=1.5, color="cyan",
                              label="saddle"))
    if any(p.ring_radius is not None for p in panels):
        handles.append(Line2D([], [], color="yellow", lw=1.5, label="minimum ring (continuum)"))
    return handles


def _draw_attractors(ax, panel) -> None:
    if panel.ring_radius is not None:
        t = np.linspace(0, 2 * np.pi, 400)
        ax.plot(panel.ring_radius * np.cos(t), panel.ring_radius * np.sin(t), color="yellow",
                lw=1.5)
        return
    stable = panel.kinds != "saddle"
    shifted = panel.attractor_energy - panel.attractor_energy[stable].min()
    ax.plot(*panel.attractors[stable].T, "x", color="yellow", ms=8, mew=2)
    spurious = panel.attractors[panel.kinds == "spurious"]
    ax.plot(*spurious.T, "o", mfc="none", mec="yellow", ms=12, mew=1)
    ax.plot(*panel.attractors[~stable].T, "x", color="cyan", ms=6, mew=1.5)
    if stable.sum() <= 12:
        for (x, y), e in zip(panel.attractors[stable], shifted[stable]):
            ax.annotate(f"{e:.3g}", (x, y), xytext=(4, 4), textcoords="offset points",
                        color="yellow", fontsize=7)


def plot_learned_landscape(rows: Sequence[Mapping], extent: float, sigma: float):
    """Trained 2D models beside the exact energy of their training sets: per K a row of
    two heat maps (dark = low) with contours, each shifted to minimum 0 and clipped at
    the exact panel's 90th percentile (one colour scale per row, its colour bar at the
    right), the unit circle, training points (red stars) and attractors; one legend below.

    rows: dicts with K, exact and learned (G, G) energies on [−extent, extent]² (rows
    along y), train (K, 2), the learned attractors' centres (A, 2), counts (A,) and
    memorized (A,) bool (discs sized by count: yellow memorized, cyan not; their numbers
    under the panel), and optionally exact_attractors (B, 2) with exact_kinds (B,)
    (yellow crosses, spurious circled, saddles left out).
    """
    fig, axes = plt.subplots(len(rows), 2, figsize=(7.8, 3.7 * len(rows) + 0.8),
                             layout="constrained", squeeze=False)
    box = (-extent, extent, -extent, extent)
    theta = np.linspace(0, 2 * np.pi, 400)
    for (left, right), row in zip(axes, rows):
        top = np.percentile(row["exact"] - row["exact"].min(), 90)
        for ax, key, name in [(left, "exact", "exact"), (right, "learned", "trained (PF-ODE)")]:
            shown = np.clip(row[key] - row[key].min(), 0, top)
            image = ax.imshow(shown, origin="lower", cmap="magma", extent=box, vmin=0, vmax=top)
            ax.contour(shown, levels=8, colors="white", linewidths=0.5, alpha=0.5, extent=box)
            ax.plot(np.cos(theta), np.sin(theta), "--", color="white", lw=0.8, alpha=0.7)
            ax.plot(*np.asarray(row["train"]).T, "*", color="red", mec="darkred", mew=0.4,
                    ms=9 if len(row["train"]) < 50 else 2)
            ax.set(xlim=(-extent, extent), ylim=(-extent, extent), xticks=[], yticks=[])
            ax.set_title(f"K = {row['K']}: {name}", fontsize=10)
        # an inset colour bar: a child of the panel, so the figure keeps two axes per row
        bar = fig.colorbar(image, cax=right.inset_axes([1.04, 0.0, 0.05, 1.0]))
        bar.ax.tick_params(labelsize=7)
        bar.set_label("energy above its minimum", fontsize=7)
        _draw_exact_attractors(left, row)
        _draw_learned_attractors(right, row)
    fig.legend(handles=_learned_handles(rows), loc="outside lower center", ncol=3,
               **DARK_LEGEND)
    fig.suptitle(f"energy −log p_σ at σ = {sigma:.3g} (shifted to minimum 0; dark = low)",
                 fontsize=10)
    return fig


def _learned_handles(rows: Sequence[Mapping]) -> list:
    kinds = {k for r in rows if r.get("exact_kinds") is not None for k in r["exact_kinds"]}
    handles = [Line2D([], [], ls="", marker="*", ms=9, color="red", mec="darkred",
                      label="training point"),
               Line2D([], [], ls="--", color="white", lw=0.8, label="unit circle"),
               Line2D([], [], color="white", lw=0.5, label="contours of the energy")]
    if kinds - {"saddle"}:
        handles.append(Line2D([], [], ls="", marker="x", ms=8, mew=2, color="yellow",
                              label="exact minimum (left)"))
    if "spurious" in kinds:
        handles.append(Line2D([], [], ls="", marker="o", ms=12, mfc="none", mec="yellow",
                              label="circled: spurious minimum"))
    for color, name in (("yellow", "at a training point (memorized)"),
                        ("cyan", "elsewhere (new)")):
        handles.append(Line2D([], [], ls="", marker="o", ms=9, color=color, mec="black",
                              label=f"learned attractor {name}"))
    handles.append(Line2D([], [], ls="", marker="o", ms=5, color="0.8", mec="black",
                          label="disc size: the samples that end there"))
    return handles


def _draw_exact_attractors(ax, row: Mapping) -> None:
    if row.get("exact_attractors") is None:
        return
    points, kinds = np.asarray(row["exact_attractors"]), np.asarray(row["exact_kinds"])
    ax.plot(*points[kinds != "saddle"].T, "x", color="yellow", ms=8, mew=2)
    ax.plot(*points[kinds == "spurious"].T, "o", mfc="none", mec="yellow", ms=12, mew=1)


def _draw_learned_attractors(ax, row: Mapping) -> None:
    centres, counts = np.asarray(row["centres"]), np.asarray(row["counts"])
    memorized = np.asarray(row["memorized"], dtype=bool)
    size = 15 + 185 * np.sqrt(counts / max(counts.max(initial=0), 1))
    parts = []
    for mask, color, name in [(memorized, "yellow", "memorized"), (~memorized, "cyan", "new")]:
        parts.append(f"{name}: {int(mask.sum())} modes, {int(counts[mask].sum())} samples")
        ax.scatter(*centres[mask].T, s=size[mask], color=color, edgecolors="black",
                   linewidths=0.6, alpha=0.85)
    ax.set_xlabel("\n".join(parts), fontsize=7)
