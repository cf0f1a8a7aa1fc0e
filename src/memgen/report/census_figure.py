"""The sweep's attractor-census figure (census.png) and its caption: computed numbers in, a
figure or HTML out (``memgen.experiments.census_stage`` reads them from census.csv)."""

from __future__ import annotations

import html
from typing import Sequence

import numpy as np

from memgen.report.figures import COLORS, plt

KIND_COLORS = {"memorized": COLORS["memorized"], "spurious": COLORS["spurious"],
               "singleton": COLORS["generalized"]}
NULL_COLOR = "0.55"


def plot_census(Ks: Sequence[int], fractions: Sequence[float], mass: np.ndarray,
                n_spurious: np.ndarray, null: np.ndarray, radius: np.ndarray, title: str = ""):
    """One column per radius fraction f. Top: the endpoint mass by kind per K (stacked
    bars: memorized, spurious, singleton; they sum to 1). Bottom: the spurious mass alone
    beside the held-out null's spurious mass at the same radius (its own scale, shared by
    the row), the number of spurious attractors above each bar.

    mass: (nK, nF, 3) in KIND_COLORS' order; n_spurious, null, radius: (nK, nF)."""
    nF = len(fractions)
    fig, axes = plt.subplots(2, nF, figsize=(2.6 * nF + 1.8, 5.4), layout="constrained",
                             sharey="row", squeeze=False, height_ratios=(3, 2))
    x = np.arange(len(Ks))
    top = max(float(np.nanmax(np.concatenate([mass[..., 1].ravel(), null.ravel()]))), 1e-3)
    for j, f in enumerate(fractions):
        _stacked(axes[0, j], x, mass[:, j])
        lo, hi = f"{np.nanmin(radius[:, j]):.3g}", f"{np.nanmax(radius[:, j]):.3g}"
        axes[0, j].set_title(f"f = {f:g}\nr = {lo}" + (f"–{hi}" if hi != lo else ""), fontsize=9)
        _spurious(axes[1, j], x, mass[:, j, 1], null[:, j], n_spurious[:, j], top)
        for ax in axes[:, j]:
            ax.set_xticks(x, [str(K) for K in Ks], fontsize=7)
        axes[1, j].set_xlabel("K")
    axes[0, 0].set_ylabel("endpoint mass")
    axes[1, 0].set_ylabel("spurious mass")
    axes[0, -1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    axes[1, -1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _stacked(ax, x: np.ndarray, mass: np.ndarray) -> None:
    """Stacked bars of (nK, 3) masses by kind."""
    bottom = np.zeros(len(x))
    for k, (kind, color) in enumerate(KIND_COLORS.items()):
        values = np.nan_to_num(mass[:, k])
        ax.bar(x, values, 0.7, bottom=bottom, color=color, label=kind)
        bottom += values
    ax.set_ylim(0, 1.02)


def _spurious(ax, x: np.ndarray, spurious: np.ndarray, null: np.ndarray, count: np.ndarray,
              top: float) -> None:
    """The endpoints' spurious mass (orange) beside the held-out null's (grey, hatched)."""
    ax.bar(x - 0.18, np.nan_to_num(spurious), 0.36, color=KIND_COLORS["spurious"],
           label="spurious (endpoints)")
    ax.bar(x + 0.18, np.nan_to_num(null), 0.36, color=NULL_COLOR, hatch="//",
           edgecolor="white", lw=0, label="spurious (held-out null)")
    for xi, value, n in zip(x, spurious, count):
        if np.isfinite(n):
            ax.text(xi - 0.18, np.nan_to_num(value) + 0.02 * top, f"{int(n)}", ha="center",
                    va="bottom", fontsize=6, color=KIND_COLORS["spurious"])
    ax.set_ylim(0, 1.15 * top)


def census_caption(analysis: dict) -> str:
    """The caption of census.png (HTML): the radius rule, the kinds, the null."""
    fractions = ", ".join(f"{f:g}" for f in analysis.get("census_fractions", ()))
    sampler = analysis.get("census_sampler") or "the schedule's deterministic sampler"
    return ("<b>Attractor census.</b> For each K, the final model carried "
            f"{analysis.get('census_n', 2000)} seeded noises down {html.escape(sampler)} "
            f"({analysis.get('census_steps', 50)} steps, no noise drawn); their endpoints were "
            "clustered by single linkage in pixel ℓ2 at radius r. <b>Radius rule:</b> r = f × "
            "the median, over that K's held-out images, of the distance to the nearest "
            f"training image (one column per f = {fractions}; the range of r across K under "
            "each f). Top: the share of endpoints in clusters with a training image within r "
            "(memorized, red), in recurring clusters (≥ 2 endpoints) with none (spurious, "
            "orange) and in singletons (generalized, blue). Bottom: the spurious share alone "
            "(number of spurious attractors above each bar) beside the held-out null (grey, "
            "hatched): as many of that K's held-out images as there are endpoints (all of them "
            "where fewer: census.csv's null_n_points), clustered the same way at the same r, "
            "which also set r. A spurious "
            "mass is a finding only above the null of its own column and K; the numbers "
            "move with r, so read every column (census.csv, with each kind's precision: the "
            "share of its endpoints on the held-out manifold, beside the held-out images' "
            "own; each spurious attractor's two nearest training images and its place "
            "between them: census_spurious.csv).")
