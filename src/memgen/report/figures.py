"""Figures: they take computed numbers and return a matplotlib Figure; no metrics here."""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib
import matplotlib.ticker
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from memgen.errors import UserError
from memgen.io import atomic_file
from memgen.metrics.rules import LABEL_NAMES  # noqa: E402


def save_figure(fig, path, dpi: int = 130) -> None:
    """Write ``fig`` to ``path`` atomically (temp file + rename) and release it."""
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)

COLORS = {"memorized": "tab:red", "spurious": "tab:orange", "generalized": "tab:blue"}
CAPACITY_LABEL = {"MC": "memorized", "SC": "spurious", "GC": "generalized"}


def plot_fractions(K: np.ndarray, fractions: np.ndarray, lo: np.ndarray | None = None,
                   hi: np.ndarray | None = None, capacities: Mapping[str, int | None] = (),
                   null: np.ndarray | None = None, title: str = ""):
    """Paper Fig. 2: the three fractions against K (log axis) with shaded 95% intervals.

    fractions, lo, hi, null: (M, 3) in LABEL_NAMES order; null rates (NaN where unknown)
    are dashed in their label's colour.
    capacities: {"MC": K or None, ...} (or Capacity objects), drawn as dotted vertical lines
    only where a value: an SC that does not rise above its null rate is None and not drawn.
    """
    fig, ax = plt.subplots(figsize=(8.2, 4.2), layout="constrained")
    handles = _draw_fractions(ax, K, fractions, lo, hi, null)
    drawn = []
    for name, value in dict(capacities).items():
        value = getattr(value, "value", value)  # a Capacity or a plain K
        if value is not None:
            drawn.append(name)
            ax.axvline(value, ls=":", color=COLORS[CAPACITY_LABEL[name]], lw=1.2)
            ax.text(value, 1.02, name, ha="center", va="bottom",
                    color=COLORS[CAPACITY_LABEL[name]], transform=ax.get_xaxis_transform())
    _K_axis(ax, K)
    if lo is not None and hi is not None:
        handles.append(Patch(color="grey", alpha=0.3, lw=0, label="shaded: 95% interval"))
    if null is not None:
        handles += ax.plot([], [], "k--", lw=1,
                           label="dashed: null rate of each\nlabel (held-out real data)")
    if drawn:
        handles.append(Line2D([], [], color="black", ls=":", lw=1.2,
                              label=f"dotted: {', '.join(drawn)}\n(capacities, eqs. 1–3)"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8,
              frameon=False)  # outside the axes: it hides no curve
    if title:
        ax.set_title(title, fontsize=10, pad=16)  # above the capacity labels
    return fig


def _draw_fractions(ax, K: np.ndarray, fractions: np.ndarray, lo: np.ndarray | None,
                    hi: np.ndarray | None, null: np.ndarray | None) -> list:
    """The three fractions (solid), their intervals (shaded) and null rates (dashed) on
    ``ax``; returns the fraction lines (legend handles)."""
    handles = []
    for j, name in enumerate(LABEL_NAMES):
        handles += ax.plot(K, fractions[:, j], "o-", ms=3.5, color=COLORS[name], label=name)
        if lo is not None and hi is not None:
            ax.fill_between(K, lo[:, j], hi[:, j], color=COLORS[name], alpha=0.2, lw=0)
        if null is not None:
            ax.plot(K, null[:, j], "--", lw=1, color=COLORS[name], alpha=0.7)
    return handles


def _K_axis(ax, K: np.ndarray) -> None:
    """A log K axis ticked at the K values (up to 12 of them), fractions from 0 to 1."""
    if len(K) > 1 and K.min() > 0:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        if len(K) <= 12:
            ax.set_xticks(K, [str(int(k)) for k in K], fontsize=8)
    ax.set(xlabel="training-set size K", ylabel="fraction of evaluated samples",
           ylim=(-0.02, 1.02))


def plot_protocols(panels: Sequence[Mapping]):
    """Both protocols side by side on the same samples: one panel per protocol, as
    :func:`plot_fractions` without capacities. panels: dicts with title, K (M,), fractions,
    lo, hi, null (M, 3) in LABEL_NAMES order (null NaN where unknown)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.9), sharey=True,
                             layout="constrained", squeeze=False)
    for ax, panel in zip(axes[0], panels):
        handles = _draw_fractions(ax, panel["K"], panel["fractions"], panel["lo"],
                                  panel["hi"], panel["null"])
        _K_axis(ax, panel["K"])
        ax.set_title(panel["title"], fontsize=9)
    for ax in axes[0][1:]:
        ax.set_ylabel("")  # the first panel's, shared
    handles += [Patch(color="grey", alpha=0.3, lw=0, label="shaded: 95% interval"),
                Line2D([], [], color="black", ls="--", lw=1,
                       label="dashed: null rate (held-out real data, same protocol)")]
    fig.legend(handles=handles, loc="outside lower center", ncol=5, fontsize=8, frameon=False)
    return fig


def plot_breakdown_grid(groups: Mapping[str, tuple[np.ndarray, np.ndarray]],
                        title: str = ""):
    """Samples in named groups (the d1/d2 bins), each above its nearest training image:
    groups = {name: (samples (n, C, H, W), nearest training images (n, C, H, W))}, images
    in [-1, 1]; an empty group keeps its (empty) row."""
    columns = max(1, max(len(samples) for samples, _ in groups.values()))
    fig, axes = plt.subplots(2 * len(groups), columns, squeeze=False, layout="constrained",
                             figsize=(max(columns, 4) * 0.75, 1.6 * len(groups) + 0.7))
    for g, (name, (samples, nearest)) in enumerate(groups.items()):
        top, bottom = axes[2 * g], axes[2 * g + 1]
        for j in range(columns):
            if j < len(samples):
                _show(top[j], samples[j], "", COLORS["spurious"])
                _show(bottom[j], nearest[j], "")
            else:
                top[j].axis("off")
                bottom[j].axis("off")
        top[0].set_title(f"{name} ({len(samples)} shown)", fontsize=8, loc="left")
    fig.suptitle((f"{title}\n" if title else "") + "each sample (orange frame) above its "
                 "nearest training image", fontsize=8)
    return fig


def plot_phase_map(Ks: Sequence[int], steps: Sequence[int], fractions: np.ndarray,
                   tau: Sequence[float | None] | None = None, title: str = ""):
    """K × training-steps phase map: three panels (memorized, spurious, generalized), each
    the label's fraction as colour (0–1, grey where NaN: pair not measured) on log-spaced
    axes, with a colour bar per panel.

    fractions: (len(Ks), len(steps), 3) in LABEL_NAMES order. tau: optional τ_mem per K
    (None/NaN where not reached), overlaid as white points (step, K).
    """
    Ks, steps = np.asarray(Ks, dtype=float), np.asarray(steps, dtype=float)
    fractions = np.asarray(fractions, dtype=float)
    if fractions.shape != (len(Ks), len(steps), 3):
        raise UserError(f"fractions must have shape ({len(Ks)}, {len(steps)}, 3), "
                         f"got {fractions.shape}")
    if not (len(Ks) and len(steps) and (Ks > 0).all() and (steps > 0).all()):
        raise UserError("Ks and steps must be non-empty and positive (log axes)")
    k_order, s_order = np.argsort(Ks), np.argsort(steps)
    Ks, steps = Ks[k_order], steps[s_order]
    fractions = fractions[k_order][:, s_order]
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.9), layout="constrained")
    for j, (ax, name) in enumerate(zip(axes, LABEL_NAMES)):
        mesh = ax.pcolormesh(_log_edges(steps), _log_edges(Ks),
                             np.ma.masked_invalid(fractions[:, :, j]), cmap=cmap, vmin=0, vmax=1)
        fig.colorbar(mesh, ax=ax, label=f"fraction {name}")
        ax.set(xscale="log", yscale="log", xlabel="training steps",
               ylabel="K (training-set size)", title=name)
        ax.set_xticks(steps, [f"{v:g}" for v in steps], minor=False)
        ax.set_yticks(Ks, [f"{v:g}" for v in Ks], minor=False)
        ax.minorticks_off()
        if tau is not None:
            t = np.array([np.nan if v is None else v for v in tau], dtype=float)[k_order]
            ax.plot(t, Ks, "o", color="white", mec="black", ms=5,
                    label="τ_mem(K): first step count with memorized ≥ ½")
    if tau is not None:
        fig.legend(handles=axes[0].lines[:1], loc="outside lower center", fontsize=8,
                   frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _log_edges(centres: np.ndarray) -> np.ndarray:
    """Cell edges for sorted positive centres: geometric midpoints, ends mirrored in log."""
    if len(centres) == 1:
        return centres[0] * np.array([0.5, 2.0])
    mid = np.sqrt(centres[1:] * centres[:-1])
    return np.concatenate([[centres[0] ** 2 / mid[0]], mid, [centres[-1] ** 2 / mid[-1]]])


def plot_neighbours(samples: np.ndarray, train: np.ndarray, synth: np.ndarray,
                    train_idx: np.ndarray, synth_idx: np.ndarray, labels: np.ndarray,
                    chosen: Mapping[str, Sequence[int]], train_dist: np.ndarray | None = None,
                    synth_dist: np.ndarray | None = None, title: str = ""):
    """Paper Fig. 1: per label, evaluated samples with top-k training (upper row) and
    synthetic (lower row) neighbours, each captioned with its distance. Images are
    (N, C, H, W) in [-1, 1].

    chosen: label name -> indices into ``samples`` to show.
    """
    if samples.ndim != 4:
        raise UserError("neighbour grids need image samples of shape (N, C, H, W)")
    k = train_idx.shape[1]
    rows = [(name, i) for name in LABEL_NAMES for i in chosen.get(name, ())]
    if not rows:
        raise UserError("no samples chosen for the neighbour grid")
    fig, axes = plt.subplots(2 * len(rows), k + 1, figsize=(1.1 * (k + 1), 2.2 * len(rows)),
                             squeeze=False, layout="constrained")
    for r, (name, i) in enumerate(rows):
        top, bottom = axes[2 * r], axes[2 * r + 1]
        _show(top[0], samples[i], f"{name}\n#{i}", COLORS[name])
        bottom[0].axis("off")
        for j in range(k):
            _show(top[j + 1], train[train_idx[i, j]], _caption("train", train_dist, i, j))
            if j < synth_idx.shape[1]:
                _show(bottom[j + 1], synth[synth_idx[i, j]], _caption("synth", synth_dist, i, j))
            else:
                bottom[j + 1].axis("off")
    key = ("left: evaluated sample (label, index)\nupper row: its nearest training images, "
           "lower row: its nearest synthetic samples (S′)\nnearest first, titled with their "
           "distance")
    fig.suptitle(f"{title}\n{key}" if title else key, fontsize=7)
    return fig


def _caption(kind: str, dist: np.ndarray | None, i: int, j: int) -> str:
    return kind if dist is None else f"{kind} {dist[i, j]:.3g}"


def _show(ax, image: np.ndarray, caption: str, color: str = "black") -> None:
    picture = np.clip((np.transpose(image, (1, 2, 0)) + 1) / 2, 0, 1)
    if picture.shape[2] == 1:
        ax.imshow(picture[:, :, 0], cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(picture)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(caption, fontsize=7, color=color)
    for spine in ax.spines.values():
        spine.set_color(color)


def plot_image_pairs(top: np.ndarray, bottom: np.ndarray, captions: Sequence[str],
                     title: str = ""):
    """Pairs of (N, C, H, W) images in [-1, 1]: column i shows top[i] above bottom[i]."""
    n = len(top)
    fig, axes = plt.subplots(2, n, figsize=(max(n, 2) * 1.0, 2.6), squeeze=False)
    for i in range(n):
        _show(axes[0, i], top[i], captions[i])
        _show(axes[1, i], bottom[i], "")
        axes[0, i].title.set_fontsize(5)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def plot_by_label(panels: Mapping[str, Mapping[str, np.ndarray]], ylabel: str,
                  title: str = "", log: bool = False):
    """Distributions per label, one group of boxes per key of ``panels`` (e.g. per K):
    panels = {group name: {label: values}}; non-finite values are left out, counts shown."""
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(panels) + 1.5) + 1.4, 3.4),
                           layout="constrained")
    width, shown = 0.8 / 3, 0
    for g, (group, labels) in enumerate(panels.items()):
        for j, (label, values) in enumerate(labels.items()):
            v = np.asarray(values, dtype=float)
            total = len(v)
            v = v[np.isfinite(v) & ((v > 0) if log else True)]
            shown += len(v)
            x = g + (j - (len(labels) - 1) / 2) * width
            color = COLORS.get(label, "gray")
            if len(v):
                ax.boxplot(v, positions=[x], widths=width * 0.8, showfliers=False,
                           medianprops={"color": color}, boxprops={"color": color},
                           whiskerprops={"color": color}, capprops={"color": color})
                jitter = np.random.default_rng(g * 3 + j).uniform(-0.25, 0.25, len(v))
                ax.plot(x + jitter * width, v, ".", ms=2.5, color=color, alpha=0.5)
            count = str(len(v)) if len(v) == total else f"{len(v)}/{total}"
            ax.text(x, 1.0, count, transform=ax.get_xaxis_transform(), ha="center",
                    va="bottom", fontsize=6, color=color)
    ax.set_xticks(range(len(panels)), list(panels), fontsize=8)
    ax.set_xlim(-0.6, len(panels) - 0.4)
    if log:
        ax.set_yscale("log")
    if not shown:
        ax.text(0.5, 0.5, "no value to draw" + (" (none positive: log axis)" if log else ""),
                transform=ax.transAxes, ha="center", va="center", color="gray")
    ax.set_ylabel(ylabel)
    handles = [Line2D([], [], color=COLORS.get(n, "gray"), marker="s", ls="", label=n)
               for n in dict.fromkeys(n for labels in panels.values() for n in labels)]
    handles.append(Line2D([], [], ls="", marker="$n$", color="gray",
                          label="number above: samples drawn\n(/ analysed, where fewer)"))
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1),
              frameon=False)
    if title:
        ax.set_title(title, fontsize=10, pad=12)
    return fig


def plot_label_bars(groups: Mapping[str, tuple], title: str = ""):
    """Grouped bars of label fractions: groups maps a name (e.g. "observed", "null rate")
    to (fractions, lo, hi), each (3,) in LABEL_NAMES order; lo/hi may be None."""
    fig, ax = plt.subplots(figsize=(5.6, 3.6), layout="constrained")
    width = 0.8 / len(groups)
    x = np.arange(3)
    for g, (group, (values, lo, hi)) in enumerate(groups.items()):
        values = np.asarray(values)
        err = None if lo is None else [values - np.asarray(lo), np.asarray(hi) - values]
        ax.bar(x + (g - (len(groups) - 1) / 2) * width, values, width * 0.95, yerr=err,
               capsize=3, color=[COLORS[n] for n in LABEL_NAMES], alpha=1.0 - 0.3 * g,
               hatch=("", "//", "..", "xx")[g % 4], edgecolor="black", lw=0.5, label=group)
    ax.set_xticks(x, LABEL_NAMES)
    ax.set(ylabel="fraction of evaluated samples", ylim=(0, 1.05))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def plot_phase(rows: Sequence[Mapping], title: str = ""):
    """Phase sweep: curves against K for one σ, or (K × β) heat maps for several."""
    sigmas = sorted({r["sigma"] for r in rows}, reverse=True)  # β ascending upwards
    if len(sigmas) == 1:
        return _phase_curves(rows, title)
    Ks = sorted({r["K"] for r in rows})
    keys = [("share_memorized", "starts → memorized attractors", (0, 1)),
            ("share_spurious", "starts → spurious attractors", (0, 1)),
            ("n_attractors", "attractors found", (None, None))]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), layout="constrained", squeeze=False)
    lookup = {(r["sigma"], r["K"]): r for r in rows}
    betas = [1 / (2 * s**2) for s in sigmas]
    for ax, (key, label, (vmin, vmax)) in zip(axes[0], keys):
        grid = np.array([[lookup[(s, K)][key] for K in Ks] for s in sigmas], dtype=float)
        im = ax.imshow(grid, origin="lower", aspect="auto", vmin=vmin, vmax=vmax, cmap="viridis")
        for (i, j), value in np.ndenumerate(grid):
            if key == "n_attractors":
                ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=6, color="w")
        ax.set_xticks(range(len(Ks)), [str(K) for K in Ks], rotation=45, fontsize=7)
        ax.set_yticks(range(len(sigmas)), [f"{b:.3g}" for b in betas], fontsize=7)
        ax.set(xlabel="K", ylabel="β = 1/(2σ²)", title=label)
        fig.colorbar(im, ax=ax, shrink=0.8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _phase_curves(rows: Sequence[Mapping], title: str):
    K = np.array([r["K"] for r in rows])
    fig, ax = plt.subplots(figsize=(8.4, 4.2), layout="constrained")
    for key, name, style in [("share_memorized", "memorized", "o-"),
                             ("share_spurious", "spurious", "o-")]:
        ax.plot(K, [r[key] for r in rows], style, ms=3.5, color=COLORS[name],
                label=f"starts → {name} attractors")
    for name in LABEL_NAMES:
        ax.plot(K, [r[f"rule_{name}"] for r in rows], "--", color=COLORS[name], lw=1,
                label=f"eqs. 4–6 {name}")
    ax.set_xscale("log")
    ax.set(xlabel="K (stored patterns)", ylabel="share of starts", ylim=(-0.02, 1.02))
    twin = ax.twinx()
    twin.plot(K, [r["n_attractors"] for r in rows], "k:", lw=1.2)
    if max(r["n_attractors"] for r in rows) > 50:
        twin.set_yscale("log")
    twin.set_ylabel("attractors found (dotted)")
    handles = ax.get_lines() + [Line2D([], [], color="black", ls=":", lw=1.2,
                                       label="attractors found (right axis)")]
    fig.legend(handles=handles, loc="outside right upper", fontsize=7, frameon=False)
    ax.set_title(title + f"  (σ = {rows[0]['sigma']:.3g}, β = {rows[0]['beta']:.3g})",
                 fontsize=10)
    return fig


def plot_samples_2d(panels: Sequence[Mapping]):
    """2D sweeps: per K, the training points (red stars) and the evaluated samples coloured
    by label. panels: dicts with K, train (K, 2), samples (n, 2), labels (n,)."""
    columns = min(len(panels), 5)
    rows = int(np.ceil(len(panels) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.0 * columns, 3.1 * rows),
                             layout="constrained", squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    theta = np.linspace(0, 2 * np.pi, 300)
    for ax, panel in zip(axes.flat, panels):
        ax.plot(np.cos(theta), np.sin(theta), "--", color="gray", lw=0.7)
        for code, name in enumerate(LABEL_NAMES):
            pts = panel["samples"][panel["labels"] == code]
            ax.scatter(*pts.T, s=3, color=COLORS[name], alpha=0.6, label=name)
        ax.plot(*panel["train"].T, "*", color="red", mec="darkred",
                ms=8 if len(panel["train"]) < 50 else 2)
        ax.set(xlim=(-1.6, 1.6), ylim=(-1.6, 1.6), aspect="equal", xticks=[], yticks=[])
        ax.set_title(f"K = {panel['K']}", fontsize=9)
    handles = [Line2D([], [], marker="o", ls="", ms=5, color=COLORS[name],
                      label=f"evaluated sample: {name}") for name in LABEL_NAMES]
    handles += [Line2D([], [], marker="*", ls="", ms=9, color="red", mec="darkred",
                       label="training point"),
                Line2D([], [], ls="--", color="gray", lw=0.7, label="unit circle (the data)")]
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    return fig


def plot_sample_grid(images: np.ndarray, labels: np.ndarray | None = None, columns: int = 16,
                     title: str = ""):
    """A grid of (N, C, H, W) images in [-1, 1], framed by label colour when given."""
    rows = int(np.ceil(len(images) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 0.6, rows * 0.6 + 0.6),
                             squeeze=False, layout="constrained")
    for i, ax in enumerate(axes.flat):
        if i < len(images):
            color = "black" if labels is None else COLORS[LABEL_NAMES[int(labels[i])]]
            _show(ax, images[i], "", color)
            for spine in ax.spines.values():
                spine.set_linewidth(1.5)
        else:
            ax.axis("off")
    if labels is not None:
        shown = sorted({int(v) for v in labels[:len(images)]})
        fig.legend(handles=[Patch(facecolor="none", edgecolor=COLORS[LABEL_NAMES[c]], lw=1.5,
                                  label=f"frame: {LABEL_NAMES[c]}") for c in shown],
                   loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def plot_denoiser_error(sigma: np.ndarray, curves: Mapping[str, tuple], title: str = ""):
    """Log-log RMS error per coordinate against the VE noise level σ (``memgen diagnose``).

    curves: legend label -> (rms, lo, hi), each (L,) like sigma; lo/hi (95% interval,
    may be NaN) are shaded. Non-positive values are left off the log axis.
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    styles = ("o-", "s--", "^:")
    # all zero (a model compared with itself, a constant training set): a linear axis
    positive = any((np.asarray(rms, dtype=float) > 0).any() for rms, _, _ in curves.values())
    for k, (label, (rms, lo, hi)) in enumerate(curves.items()):
        if positive:
            rms, lo = (np.where(np.asarray(v, dtype=float) > 0, v, np.nan) for v in (rms, lo))
        (line,) = ax.plot(sigma, rms, styles[k % 3], ms=4, label=label)
        ax.fill_between(sigma, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
    ax.set_xscale("log")
    if positive:
        ax.set_yscale("log")
    ax.set(xlabel="noise level σ (VE)", ylabel="RMS error per coordinate")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return fig
