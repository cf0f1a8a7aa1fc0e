"""Commands beyond the labels: training-set hygiene and the basins of attractors.

Registered on the main ``memgen`` group by ``memgen.cli`` (same error handling: a bad
input is one line on stderr and exit status 1, with nothing half-written left behind).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import click
import numpy as np

from memgen.io import atomic_file, atomic_output_dir, check_output_dir, load_samples, write_json

METRIC_HELP = "Distance: l2 on pixels or an LPIPS embedding (see memgen classify --help)."


@click.group()
def hygiene():
    """Training-set checks: near-duplicates, and models trained on disjoint halves."""


@hygiene.command()
@click.option("--train", "train_path", type=click.Path(dir_okay=False),
              help="Training set (.npz key 'samples' or .npy); or use --data and --K.")
@click.option("--data", help="A named data set (fmnist, mnist, cifar10, digits, circle).")
@click.option("--K", "K", type=int, help="With --data: the first K of the seeded split "
                                         "[the whole set].")
@click.option("--data-root", type=click.Path(file_okay=False))
@click.option("--threshold", type=click.Choice(["relative", "absolute"]), default="relative",
              show_default=True, help="relative: δ × the median nearest-neighbour distance; "
                                      "absolute: δ in the metric's units.")
@click.option("--delta", type=float, default=0.1, show_default=True)
@click.option("--k", type=int, default=10, show_default=True,
              help="Neighbours searched per sample (largest group size found: k + 1).")
@click.option("--metric", default="l2", show_default=True, help=METRIC_HELP)
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output folder: duplicates.csv, groups.json, summary.json, pairs.png.")
def duplicates(train_path, data, K, data_root, threshold, delta, k, metric, out):
    """Near-duplicate training samples (they would pass for memorized copies)."""
    from memgen.hygiene import near_duplicates

    check_output_dir(out)
    train = _training_set(train_path, data, K, data_root)
    found = near_duplicates(train, threshold=threshold, delta=delta, k=k, metric=metric)
    summary = {"n": len(train), "metric": metric, "threshold": threshold, "delta": delta,
               "distance_cut": found.threshold, "pairs": len(found.pairs),
               "samples_in_groups": int(sum(len(g) for g in found.groups)),
               "groups": len(found.groups),
               "median_nn_distance": float(np.median(found.nn_dist))}
    with atomic_output_dir(out) as tmp:
        with (tmp / "duplicates.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["i", "j", "distance"])
            writer.writerows([int(i), int(j), float(d)] for (i, j), d in
                             zip(found.pairs, found.dist))
        (tmp / "groups.json").write_text(json.dumps([g.tolist() for g in found.groups]))
        write_json(tmp / "summary.json", summary)
        if train.ndim == 4 and len(found.pairs):
            _save_pairs(tmp / "pairs.png", train, found)
    click.echo(f"{summary['pairs']} near-duplicate pairs in {summary['groups']} groups "
               f"({summary['samples_in_groups']} of {len(train)} samples; distance ≤ "
               f"{found.threshold:.4g}, median nearest-neighbour distance "
               f"{summary['median_nn_distance']:.4g}); wrote {out}")


def _training_set(train_path, data, K, data_root) -> np.ndarray:
    if bool(train_path) == bool(data):
        raise ValueError("give either --train FILE or --data NAME")
    if train_path:
        return load_samples(train_path, "--train")
    from memgen.data import load_dataset, nested_indices

    pool = load_dataset(data, "train", data_root)
    if K is None:
        return pool
    if not 1 <= K <= len(pool):
        raise ValueError(f"--K {K} is not between 1 and the {len(pool)} samples of {data}")
    return pool[nested_indices(len(pool), K, 42 if data == "circle" else 3407)]


def _save_pairs(path: Path, train: np.ndarray, found) -> None:
    from memgen.report.figures import plot_image_pairs

    order = np.argsort(found.dist)[:16]
    a, b = train[found.pairs[order, 0]], train[found.pairs[order, 1]]
    captions = [f"#{i} / #{j}  d = {d:.3g}" for (i, j), d in
                zip(found.pairs[order], found.dist[order])]
    with atomic_file(path) as tmp:
        plot_image_pairs(a, b, captions, title="closest training pairs").savefig(tmp, dpi=110)


@hygiene.command()
@click.option("--checkpoint-a", required=True, type=click.Path(dir_okay=False),
              help="A model trained on one half (memgen train ... --half 1).")
@click.option("--checkpoint-b", required=True, type=click.Path(dir_okay=False),
              help="A model trained on the other half (memgen train ... --half 2).")
@click.option("--train-a", type=click.Path(dir_okay=False),
              help="Training set of model a [train.npz beside its checkpoint].")
@click.option("--train-b", type=click.Path(dir_okay=False),
              help="Training set of model b [train.npz beside its checkpoint].")
@click.option("--n", type=int, default=256, show_default=True, help="Noise seeds.")
@click.option("--sampler", type=click.Choice(["ddpm", "ddim", "euler_maruyama", "heun"]),
              default="ddim", show_default=True,
              help="ddim/heun: the same noise gives the same sample (deterministic).")
@click.option("--steps", type=int, help="Sampling steps [the schedule's full ladder].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--metric", default="l2", show_default=True, help=METRIC_HELP)
@click.option("--device", default="cpu", show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output folder: halves.csv, summary.json, samples-a/b.npz, pairs.png.")
def halves(checkpoint_a, checkpoint_b, train_a, train_b, n, sampler, steps, seed, metric,
           device, out):
    """Disjoint-halves test (Kadkhodaie et al. 2024): sample two models trained on
    disjoint halves from the same noise; near-identical samples mean generalization."""
    from memgen.hygiene import compare_halves

    check_output_dir(out)
    sets = {}
    for name, ckpt, train in (("a", checkpoint_a, train_a), ("b", checkpoint_b, train_b)):
        train = train or Path(ckpt).with_name("train.npz")
        sets[name] = (load_samples(train, f"--train-{name}"), ckpt)
    with atomic_output_dir(out) as tmp:
        samples = {name: _sample(ckpt, n, sampler, steps, seed, device, tmp / f"gen-{name}")
                   for name, (_, ckpt) in sets.items()}
        result = compare_halves(samples["a"], samples["b"], sets["a"][0], sets["b"][0],
                                metric=metric)
        summary = {**result.summary(), "metric": metric, "sampler": sampler, "steps": steps,
                   "seed": seed, "K_a": len(sets["a"][0]), "K_b": len(sets["b"][0])}
        for name, x in samples.items():
            np.savez(tmp / f"samples-{name}.npz", samples=x)
        np.savetxt(tmp / "halves.csv", np.stack([result.between, result.nearest_a,
                                                 result.nearest_b], axis=1),
                   delimiter=",", header="between,nearest_a,nearest_b", comments="")
        write_json(tmp / "summary.json", summary)
        if samples["a"].ndim == 4:
            _save_halves_pairs(tmp / "pairs.png", samples, result)
    click.echo(f"median distance between the two models' samples {summary['median_between']:.4g}"
               f"; to their own training sets {summary['median_nearest_a']:.4g} (a), "
               f"{summary['median_nearest_b']:.4g} (b); closer to each other than to any "
               f"training image: {summary['share_closer_to_each_other']:.1%}; wrote {out}")


def _sample(checkpoint, n, sampler, steps, seed, device, folder: Path) -> np.ndarray:
    import shutil

    from memgen.cli import _denoiser
    from memgen.generate import GenerateConfig, generate

    den, schedule, shape = _denoiser(checkpoint, None, None, None, None, None, device)
    config = GenerateConfig(n=n, sampler=sampler, steps=steps, seed=seed, name="samples",
                            clip=len(shape) == 3)
    merged = generate(den, shape, schedule, config, folder, device=device, progress=True)
    samples = load_samples(merged)
    shutil.rmtree(folder)
    return samples


def _save_halves_pairs(path: Path, samples: dict, result) -> None:
    from memgen.report.figures import plot_image_pairs

    captions = [f"seed {i}: d = {d:.3g}" for i, d in enumerate(result.between[:16])]
    with atomic_file(path) as tmp:
        plot_image_pairs(samples["a"][:16], samples["b"][:16], captions,
                         title="same noise: model a (top) vs model b (bottom)").savefig(tmp, dpi=110)
