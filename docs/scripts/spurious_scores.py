"""The spurious score s1/(d1 + s1) of every evaluated sample, per K and training steps,
from a finished sweep's cache (nothing is recomputed): the figure and the largest excess
of the spurious fraction over its null rate in docs/RESULTS.md.

    python docs/scripts/spurious_scores.py CONFIG RUN OUT.png
"""

import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from memgen.experiments.config import load_config
from memgen.experiments.sweep import load_pool, run_K
from memgen.report.figures import save_figure


def main(config_path: str, run: str, out: str) -> None:
    config = load_config(config_path)
    pool = load_pool(config)
    results = [run_K(Path(run), pool, K, config) for K in sorted(config.Ks)]  # all cached
    fig, axes = plt.subplots(1, len(results), figsize=(2.6 * len(results), 2.8),
                             sharey=True, layout="constrained")
    best = None
    for ax, final in zip(axes, results):
        for state in (*final.snapshots, final):
            with np.load(state.folder / "labels.npz", allow_pickle=False) as archive:
                d1, s1 = archive["train_dist"][:, 0], archive["synth_dist"][:, 0]
            score = s1 / (d1 + s1 + 1e-6)
            # scores above 0.6 (far from every synthetic sample) go into the last bin
            ax.hist(np.minimum(score, 0.6), bins=np.linspace(0, 0.6, 31), histtype="step",
                    label=f"{state.steps} steps")
            s = state.summary
            excess = s["ci95"]["spurious"][0] - s["null"]["fractions"]["spurious"]
            if best is None or excess > best[0]:
                best = (excess, final.K, state.steps, s["fractions"]["spurious"],
                        s["ci95"]["spurious"], s["null"]["fractions"]["spurious"])
        ax.axvline(config.measure.delta_s or 1 / 3, color="k", ls=":", lw=1)
        ax.set(title=f"K = {final.K}", xlabel="s1 / (d1 + s1)")
    axes[0].set_ylabel("evaluated samples")
    axes[-1].legend(fontsize=6)
    save_figure(fig, out, dpi=120)
    excess, K, steps, frac, ci, null = best
    print(f"largest excess of the spurious 95% lower bound over the null rate: {excess:+.3f} "
          f"at K = {K}, {steps} steps (spurious {frac:.3f} [{ci[0]:.3f}, {ci[1]:.3f}], "
          f"null {null:.3f})")


if __name__ == "__main__":
    main(*sys.argv[1:])
