"""Audit your own sample files: which "generated" digits copy the training set?

Writes a training set of 300 scikit-learn 8×8 digits and a set of "generated" samples
with a known answer — 40 noisy copies of training digits, 20 blends of two training
digits that the generator keeps producing (they recur in its synthetic set S′) and 40
digits it never saw — to npz files, as a model of your own would leave them. Then it
classifies them with ``memgen.classify`` (the API of ``memgen classify --train --eval
--synth --heldout``), prints the fractions beside the null rates of held-out real digits
and the agreement with the planted truth, and draws two samples per label with their
nearest training (upper row) and synthetic (lower row) neighbours.

Run: python examples/audit_samples.py --out runs/examples/audit
"""

import argparse
from pathlib import Path

import numpy as np

import memgen
from memgen.data import load_digits
from memgen.report.figures import plot_neighbours, save_figure

LABELS = ("memorized", "spurious", "generalized")


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    digits = load_digits().images[rng.permutation(1797)]  # (1797, 1, 8, 8) in [-1, 1]
    train, heldout, unseen = digits[:300], digits[300:800], digits[800:]
    def noisy(x):  # a near-copy: Gaussian noise of std 0.03 per pixel
        return np.clip(x + 0.03 * rng.standard_normal(x.shape), -1, 1)
    pairs = rng.choice(300, size=(20, 2), replace=False)
    blends = train[pairs].mean(axis=1)  # (20, 1, 8, 8): a mixture of two digits each
    samples = np.concatenate([noisy(train[:40]), noisy(blends), unseen[:40]])
    truth = np.repeat([0, 1, 2], [40, 20, 40])
    synth = np.concatenate([noisy(train[rng.integers(0, 300, 400)]), noisy(blends),
                            noisy(blends), unseen[40:640]])
    for name, array in (("train", train), ("samples", samples), ("synth", synth),
                        ("heldout", heldout)):
        np.savez(out / f"{name}.npz", samples=array.astype(np.float32))

    result = memgen.classify(out / "train.npz", out / "samples.npz", out / "synth.npz",
                             heldout=out / "heldout.npz")
    null = result.null.as_dict()["fractions"]  # the same rule on held-out real digits
    print(f"{'label':<12}{'fraction':>9}{'95% CI':>18}{'null rate':>11}")
    for name in LABELS:
        lo, hi = result.ci95[name]
        print(f"{name:<12}{result.fractions[name]:>9.3f}{f'[{lo:.3f}, {hi:.3f}]':>18}"
              f"{null[name]:>11.3f}")
    print(f"agreement with the planted truth: {np.mean(result.labels == truth):.0%}")

    near = result.neighbours
    chosen = {name: list(np.flatnonzero(result.labels == code)[:2])
              for code, name in enumerate(LABELS)}
    fig = plot_neighbours(samples, train, synth, near.train_idx, near.synth_idx,
                          result.labels, chosen, near.train_dist, near.synth_dist)
    save_figure(fig, out / "neighbours.png", dpi=110)
    print(f"wrote {out / 'neighbours.png'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="Output folder.")
    main(parser.parse_args().out)
