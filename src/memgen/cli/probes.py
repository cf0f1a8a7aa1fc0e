"""Commands beyond the labels: training-set hygiene and the basins of attractors.

Registered on the main ``memgen`` group by ``memgen.cli.main`` (same error handling: a bad
input is one line on stderr and exit status 1, with nothing half-written left behind).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
import zipfile
from pathlib import Path

import click
import numpy as np
import torch

from memgen.cli.devices import device_option
from memgen.cli.diagnose import checkpoint_training_set
from memgen.cli.models import model_from_options
from memgen.cli.options import (SEED, RegistryChoice, input_range_option, input_ranges,
                                overwrite_option, show_progress)
from memgen.data import DATASETS, default_split_seed, load_dataset, nested_indices
from memgen.diffusion.generate import GenerateConfig, generate
from memgen.diffusion.samplers import SAMPLERS
from memgen.errors import UserError
from memgen.io import atomic_output_dir, check_output_dir, load_samples, write_json
from memgen.metrics.features import FEATURE_MAPS, metric_help
from memgen.metrics.hygiene import (check_halves, compare_halves, halves_quality,
                                    near_duplicates)
from memgen.metrics.rules import LABEL_NAMES
from memgen.metrics.stats import label_groups, quartiles_by_label
from memgen.neighbours import knn_search
from memgen.provenance import file_sha256
from memgen.probes.curvature import hessian_eigsh, hessian_spectrum
from memgen.probes.recovery import METRICS as DISTANCES, RecoveryConfig, critical_time
from memgen.probes.relative_energy import relative_energy
from memgen.report.figures import plot_by_label, plot_image_pairs, save_figure

METRIC_HELP = f"Distance. {metric_help()} (see memgen classify --help)."


@click.group()
def hygiene():
    """Training-set checks: near-duplicates, and models trained on disjoint halves."""


@hygiene.command()
@click.option("--train", "train_path", type=click.Path(dir_okay=False),
              help="Training set (.npz key 'samples' or .npy); or use --data and --K.")
@click.option("--data", type=click.Choice(tuple(DATASETS)), help="A named data set.")
@click.option("--K", "K", type=int, help="With --data: the first K of the seeded split "
                                         "[the whole set].")
@click.option("--data-root", type=click.Path(file_okay=False))
@click.option("--threshold", type=click.Choice(["relative", "absolute"]), default="relative",
              show_default=True, help="relative: δ × the median nearest-neighbour distance; "
                                      "absolute: δ in the metric's units.")
@click.option("--delta", type=float, default=0.1, show_default=True)
@click.option("--k", type=int, default=10, show_default=True,
              help="Neighbours searched per sample (largest group size found: k + 1).")
@click.option("--metric", type=RegistryChoice(FEATURE_MAPS), default="l2", show_default=True,
              help=METRIC_HELP)
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output folder: duplicates.csv, groups.json, summary.json, pairs.png.")
@input_range_option()
@overwrite_option
def duplicates(train_path, data, K, data_root, threshold, delta, k, metric, input_range, out,
               overwrite):
    """Near-duplicate training samples (they would pass for memorized copies)."""
    check_output_dir(out, "hygiene duplicates", overwrite)
    _needs_a_file(input_range, train_path, "--train")
    train = _training_set(train_path, data, K, data_root, _file_range(input_range))
    found = near_duplicates(train, threshold=threshold, delta=delta, k=k, metric=metric)
    summary = {"n": len(train), "metric": metric, "threshold": threshold, "delta": delta,
               "distance_cut": found.threshold, "pairs": len(found.pairs),
               "samples_in_groups": int(sum(len(g) for g in found.groups)),
               "groups": len(found.groups),
               "median_nn_distance": float(np.median(found.nn_dist))}
    with atomic_output_dir(out, "hygiene duplicates", overwrite) as tmp:
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


def _training_set(train_path, data, K, data_root, input_range=None) -> np.ndarray:
    if bool(train_path) == bool(data):
        raise UserError("give either --train FILE or --data NAME")
    if train_path:
        return load_samples(train_path, "--train", input_range)

    pool = load_dataset(data, "train", data_root)
    if K is None:
        return pool
    if not 1 <= K <= len(pool):
        raise UserError(f"--K {K} is not between 1 and the {len(pool)} samples of {data}")
    return pool[nested_indices(len(pool), K, default_split_seed(data))]


def _save_pairs(path: Path, train: np.ndarray, found) -> None:
    order = np.argsort(found.dist)[:16]
    a, b = train[found.pairs[order, 0]], train[found.pairs[order, 1]]
    captions = [f"#{i}\n#{j}\nd = {d:.3g}" for (i, j), d in
                zip(found.pairs[order], found.dist[order])]
    save_figure(plot_image_pairs(a, b, captions, title="closest training pairs"), path, 110)


@hygiene.command()
@click.option("--checkpoint-a", required=True, type=click.Path(dir_okay=False),
              help="A model trained on one half (memgen train ... --half 1).")
@click.option("--checkpoint-b", required=True, type=click.Path(dir_okay=False),
              help="A model trained on the other half (memgen train ... --half 2).")
@click.option("--train-a", type=click.Path(dir_okay=False),
              help="Training set of model a, where its checkpoint records none [train.npz "
                   "beside it; a different set is refused].")
@click.option("--train-b", type=click.Path(dir_okay=False),
              help="Training set of model b, where its checkpoint records none [train.npz "
                   "beside it; a different set is refused].")
@click.option("--n", type=click.IntRange(min=1), default=256, show_default=True,
              help="Noise seeds.")
@click.option("--sampler", type=RegistryChoice(SAMPLERS), default="ddim", show_default=True,
              help="ddim/heun: the same noise gives the same sample (deterministic).")
@click.option("--steps", type=int, help="Sampling steps [the schedule's full ladder].")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--metric", type=RegistryChoice(FEATURE_MAPS), default="l2", show_default=True,
              help=METRIC_HELP)
@input_range_option()
@device_option
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output folder: halves.csv, summary.json, samples-a/b.npz, pairs.png.")
@overwrite_option
def halves(checkpoint_a, checkpoint_b, train_a, train_b, n, sampler, steps, seed, metric,
           input_range, device, out, overwrite):
    """Disjoint-halves test (Kadkhodaie et al. 2024): sample two models trained on
    disjoint halves from the same noise; near-identical samples mean generalization, if
    they are images at all (their precision against the other half is printed beside).
    The same model twice, the same or nested or overlapping training sets are refused."""
    check_output_dir(out, "hygiene halves", overwrite)
    _needs_a_file(input_range, train_a or train_b, "--train-a or --train-b")
    sets = _halves_sets({"a": (checkpoint_a, train_a), "b": (checkpoint_b, train_b)},
                        _file_range(input_range))
    with atomic_output_dir(out, "hygiene halves", overwrite) as tmp:
        samples = {name: _sample(ckpt, n, sampler, steps, seed, device, tmp / f"gen-{name}")
                   for name, (_, ckpt) in sets.items()}
        result = compare_halves(samples["a"], samples["b"], sets["a"][0], sets["b"][0],
                                metric=metric)
        quality = halves_quality(samples["a"], samples["b"], sets["a"][0], sets["b"][0],
                                 metric=metric)
        summary = {**result.summary(), "metric": metric, "sampler": sampler, "steps": steps,
                   "seed": seed, "K_a": len(sets["a"][0]), "K_b": len(sets["b"][0]),
                   "quality": None if quality is None else quality.as_dict()}
        for name, x in samples.items():
            np.savez(tmp / f"samples-{name}.npz", samples=x)
        np.savetxt(tmp / "halves.csv", np.stack([result.between, result.nearest_a,
                                                 result.nearest_b], axis=1),
                   delimiter=",", header="between,nearest_a,nearest_b", comments="")
        write_json(tmp / "summary.json", summary)
        if samples["a"].ndim == 4:
            _save_halves_pairs(tmp / "pairs.png", samples, result)
    off = quality is not None and quality.off_data
    click.echo(f"median distance between the two models' samples {summary['median_between']:.4g}"
               f"; to their own training sets {summary['median_nearest_a']:.4g} (a), "
               f"{summary['median_nearest_b']:.4g} (b); closer to each other than to any "
               f"training image: {summary['share_closer_to_each_other']:.1%}"
               + (" — not a generalization signature: the samples are off the data" if off
                  else ""))
    click.echo(_halves_quality_line(quality) + f"; wrote {out}")


def _halves_sets(given: dict, input_range=None) -> dict:
    """name → (training set, checkpoint): each checkpoint's recorded set (train.npz beside
    it, or --train-a/b where it records none), refused when the two are the same model
    (checkpoint bytes or training set) or the sets are not disjoint."""
    paths = [Path(ckpt) for ckpt, _ in given.values()]
    for name, path in zip(given, paths):
        if not path.is_file():
            raise UserError(f"--checkpoint-{name}: no such file {path}")
    if file_sha256(paths[0]) == file_sha256(paths[1]):
        raise UserError(f"--checkpoint-a and --checkpoint-b are the same model (identical "
                        f"bytes: {paths[0]}, {paths[1]}): the halves test needs two models "
                        "trained on disjoint halves")
    sets = {}
    for name, (ckpt, train) in given.items():
        supplied = None if not train else (load_samples(train, f"--train-{name}", input_range),
                                           str(train))
        sets[name] = (checkpoint_training_set(ckpt, supplied, f"--train-{name}")[0], ckpt)
    check_halves(sets["a"][0], sets["b"][0])
    return sets


def _halves_quality_line(quality) -> str:
    """Sample quality beside the closeness figure: what the precision means and whether
    the samples are off the data."""
    if quality is None:
        return "sample quality: not measured (training sets too small for k-NN balls)"
    return (f"sample quality: precision {quality.precision_a:.2f} (a), "
            f"{quality.precision_b:.2f} (b) against {quality.baseline_a:.2f}, "
            f"{quality.baseline_b:.2f} for real images (each model's samples and its own "
            f"training images in the k = {quality.k} balls of the other half's training set)"
            + ("; below half of real images': the samples are off the data" if
               quality.off_data else ""))


def _sample(checkpoint, n, sampler, steps, seed, device, folder: Path) -> np.ndarray:
    model = model_from_options({"checkpoint": checkpoint}, device=device)
    config = GenerateConfig(n=n, sampler=sampler, steps=steps, seed=seed, name="samples",
                            clip=len(model.shape) == 3)
    merged = generate(model.denoiser, model.shape, model.schedule, config, folder,
                      device=device, progress=show_progress())
    samples = load_samples(merged, own=True)
    shutil.rmtree(folder)
    return samples


def _save_halves_pairs(path: Path, samples: dict, result) -> None:
    captions = [f"seed {i}\nd = {d:.3g}" for i, d in enumerate(result.between[:16])]
    save_figure(plot_image_pairs(samples["a"][:16], samples["b"][:16], captions,
                                 title="same noise: model a (top) vs model b (bottom)"), path, 110)


# ------------------------------------------------------------------------------ basins


def model_options(fn):
    """--checkpoint | --exact (+ --schedule), --samples, --labels, --limit, --device, --out,
    --overwrite."""
    options = [
        click.option("--checkpoint", type=click.Path(dir_okay=False),
                     help="A memgen train checkpoint."),
        click.option("--exact", "exact_path", type=click.Path(dir_okay=False),
                     help="Training set: use its exact empirical denoiser instead."),
        click.option("--samples", "samples_path", required=True,
                     type=click.Path(dir_okay=False), help="Points to analyse (.npz / .npy)."),
        click.option("--labels", "labels_path", type=click.Path(dir_okay=False),
                     help="labels.npz of memgen classify (or a sweep's classify stage) for "
                          "these samples: results are summarised per label."),
        click.option("--limit", type=int, help="Analyse only the first N samples."),
        input_range_option(),
        device_option,
        click.option("--out", required=True, type=click.Path(file_okay=False)),
        overwrite_option,
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _load_model(checkpoint, exact_path, device, clip: bool = True, input_range=()):
    """(denoiser, schedule or None, dtype of the points): the exact model in float64 (the
    probes' bisections, Hessians and path integrals need it), without a schedule; networks
    in float32. input_range: --input-range's values, converting --exact's file."""
    if bool(checkpoint) == bool(exact_path):
        raise UserError("give exactly one of --checkpoint, --exact")
    model = model_from_options({"checkpoint": checkpoint, "exact": exact_path}, device=device,
                               exact_dtype=torch.float64, clip=clip,
                               input_range=_file_range(input_range))
    return model.denoiser, model.schedule, model.dtype


def _points(samples_path, labels_path, limit, device, dtype, input_range=()):
    """(x (B, ...), labels (B,) int or None) — the first ``limit`` samples, converted by
    --input-range (``input_range``) where it is given."""
    x = load_samples(samples_path, "--samples", _file_range(input_range))
    labels = _read_labels(labels_path) if labels_path else None
    if labels is not None and len(labels) != len(x):
        raise UserError(f"--labels has {len(labels)} entries for {len(x)} samples")
    if limit is not None:
        if limit < 1:
            raise UserError(f"--limit must be at least 1, got {limit}")
        x, labels = x[:limit], None if labels is None else labels[:limit]
    return torch.from_numpy(x).to(device, dtype), labels


def _file_range(given) -> tuple[float, float] | None:
    """The (LO, HI) of --input-range LO,HI: every sample file a command reads is in it."""
    return input_ranges(given, ("file",)).get("file")


def _needs_a_file(input_range, given, names: str) -> None:
    """UserError for --input-range where the command reads no user's sample file: the
    named data sets and memgen's own train.npz are in [-1, 1] already."""
    if input_range and not given:
        raise UserError(f"--input-range converts the sample files of {names}; none is given "
                        "(named data sets and memgen's train.npz are in [-1, 1] already)")


def _read_labels(path) -> np.ndarray:
    """The ``labels`` array of a labels.npz (memgen classify's): 0, 1 or 2 per sample."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            labels = archive["labels"] if "labels" in archive.files else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise UserError(f"--labels: cannot read {path} ({err or type(err).__name__})") from None
    if labels is None:
        raise UserError(f"{path} holds no 'labels' array")
    if (labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer)
            or ((labels < 0) | (labels > 2)).any()):
        raise UserError(f"--labels: {path} must hold one label per sample, 0 (memorized), "
                        "1 (spurious) or 2 (generalized)")
    return labels


def _write_table(path: Path, columns: dict) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(list(columns))
        writer.writerows(zip(*[np.asarray(v).tolist() for v in columns.values()]))


def _save_label_figure(path: Path, values: np.ndarray, labels, ylabel: str, title: str,
                       log: bool) -> None:
    save_figure(plot_by_label({"": label_groups(values, labels)}, ylabel=ylabel, title=title,
                              log=log), path)


@click.group()
def basins():
    """Attractors of a model: basin size (critical noise level), relative energy and
    curvature at given points, summarised per memorized/spurious/generalized label."""


@basins.command("critical-time")
@model_options
@click.option("--sigma-lo", type=float, default=0.2, show_default=True,
              help="Bracket of the bisection in VE noise level σ.")
@click.option("--sigma-hi", type=float, help="[min(10, the schedule's largest σ)]")
@click.option("--n-trials", type=int, default=10, show_default=True)
@click.option("--p", type=float, default=0.9, show_default=True,
              help="Recovery probability that defines the basin.")
@click.option("--delta", type=float, default=0.1, show_default=True,
              help="A trial is recovered when dist(x̂, x0) ≤ δ.")
@click.option("--distance", type=click.Choice(DISTANCES), default="rms", show_default=True,
              help="rms: ‖x̂ − x0‖/√D; l2: ‖x̂ − x0‖.")
@click.option("--sampler", type=RegistryChoice(SAMPLERS), default="ddim", show_default=True)
@click.option("--steps", type=int, default=20, show_default=True)
@click.option("--rel-min", type=float, default=0.1, show_default=True,
              help="Denoising ladder σ → σ·rel_min geometrically, then 0.")
@click.option("--rtol", type=float, default=0.02, show_default=True,
              help="Bisection stops when σ_hi/σ_lo ≤ 1 + rtol.")
@click.option("--seed", type=SEED, default=0, show_default=True)
def critical_time_cmd(checkpoint, exact_path, samples_path, labels_path, limit, device,
                      input_range, out, overwrite, sigma_lo, sigma_hi, n_trials, p, delta,
                      distance, sampler, steps, rel_min, rtol, seed):
    """Largest noise level σ* from which a sample is still recovered with probability ≥ p:
    noise x0 to σ, denoise back, count dist ≤ δ; bisection in log σ (paper's reference
    code: δ 0.1, 10 trials, p 0.9)."""
    config = RecoveryConfig(n_trials=n_trials, p=p, delta=delta, metric=distance,
                            sampler=sampler, steps=steps, rel_min=rel_min, seed=seed)
    check_output_dir(out, "basins critical-time", overwrite)
    den, schedule, dtype = _load_model(checkpoint, exact_path, device, input_range=input_range)
    x, labels = _points(samples_path, labels_path, limit, device, dtype, input_range)
    if sigma_hi is None:
        sigma_hi = 10.0 if schedule is None else min(10.0, float(schedule.sigmas()[0]))
    result = critical_time(den, x, sigma_lo, sigma_hi, config, rtol=rtol, schedule=schedule,
                           chunk=4096)
    sigma = result.sigma.numpy()
    columns = {"index": np.arange(len(x)), "label": _label_names(labels, len(x)),
               "sigma": sigma, "sigma_upper": result.sigma_upper.numpy(),
               "t": np.full(len(x), np.nan) if result.t is None else result.t.numpy(),
               "radius": result.radius.numpy(), "log_volume": result.log_volume.numpy(),
               "censored": result.censored.numpy()}
    summary = {"config": {**dataclasses.asdict(config), "sigma_lo": sigma_lo, "sigma_hi": sigma_hi,
                          "rtol": rtol}, "rounds": result.rounds,
               "censored_above": int((result.censored > 0).sum()),
               "censored_below": int((result.censored < 0).sum()),
               "sigma_by_label": quartiles_by_label(sigma, labels)}
    with atomic_output_dir(out, "basins critical-time", overwrite) as tmp:
        _write_table(tmp / "critical.csv", columns)
        write_json(tmp / "summary.json", summary)
        _save_label_figure(tmp / "critical.png", sigma, labels, "critical σ*",
                           f"basin size (p = {p}, δ = {delta})", log=True)
    _echo_by_label("σ*", summary["sigma_by_label"], out,
                   _censoring_notes(result.censored.numpy(), sigma_lo, sigma_hi))


def _censoring_notes(censored: np.ndarray, sigma_lo: float, sigma_hi: float) -> list[str]:
    """What the σ* table cannot show: samples never recovered even from σ_lo (σ* < σ_lo,
    recorded as 0) and samples recovered from σ_hi (σ* ≥ σ_hi, recorded as σ_hi), each with
    the bracket to move."""
    n, notes = len(censored), []
    below, above = int((censored < 0).sum()), int((censored > 0).sum())
    if below:
        notes.append(f"censored: {below} of {n} samples are not recovered even from "
                     f"σ_lo = {sigma_lo:g} (σ* < {sigma_lo:g}, recorded as 0); lower "
                     "--sigma-lo to measure them")
    if above:
        notes.append(f"censored: {above} of {n} samples are recovered from σ_hi = "
                     f"{sigma_hi:g} (σ* ≥ {sigma_hi:g}, recorded as {sigma_hi:g}); raise "
                     "--sigma-hi to measure them")
    return notes


def _label_names(labels, n: int) -> list[str]:
    return [""] * n if labels is None else [LABEL_NAMES[int(c)] for c in labels]


def _echo_by_label(name: str, table: dict, out, notes: list[str] = ()) -> None:
    for label, row in table.items():
        if row["median"] is None:
            click.echo(f"{label:>12}: n = {row['n']}, no finite value")
        else:
            click.echo(f"{label:>12}: n = {row['n']}, median {name} {row['median']:.4g} "
                       f"(quartiles {row['q25']:.4g}-{row['q75']:.4g})")
    for note in notes:
        click.echo(note)
    click.echo(f"wrote {out}")


@basins.command("relative-energy")
@model_options
@click.option("--reference", "reference_path", type=click.Path(dir_okay=False),
              help="Reference points, row by row (.npz). Default: each sample's nearest "
                   "training image (from --train, or the exact model's training set).")
@click.option("--train", "train_path", type=click.Path(dir_okay=False),
              help="Training set for the default reference [train.npz beside the "
                   "checkpoint].")
@click.option("--sigma", type=float, default=0.1, show_default=True,
              help="Noise level of the energy E_σ = −log p_σ.")
@click.option("--rtol", type=float, default=1e-6, show_default=True)
def relative_energy_cmd(checkpoint, exact_path, samples_path, labels_path, limit, device,
                        input_range, out, overwrite, reference_path, train_path, sigma, rtol):
    """ΔE = E_σ(x_ref) − E_σ(x), integrating the model's score along the quarter circle
    from x to x_ref (Raya & Ambrogioni 2023); negative: the sample lies higher than its
    reference. Default reference: the nearest training image."""
    check_output_dir(out, "basins relative-energy", overwrite)
    den, _, dtype = _load_model(checkpoint, exact_path, device, clip=False,
                                 input_range=input_range)
    x, labels = _points(samples_path, labels_path, limit, device, dtype, input_range)
    if reference_path:
        ref = _points(reference_path, None, limit, device, dtype, input_range)[0]
        if ref.shape != x.shape:
            raise UserError(f"--reference has shape {tuple(ref.shape)}, samples "
                             f"{tuple(x.shape)}")
    else:
        given = train_path or exact_path  # the user's file, converted as --input-range says
        if given:
            train = _points(given, None, None, device, dtype, input_range)[0]
        else:  # memgen train's own copy: read as written
            beside = Path(checkpoint).with_name("train.npz")
            train = torch.from_numpy(load_samples(beside, str(beside), own=True)).to(device,
                                                                                     dtype)
        near = knn_search(x.reshape(len(x), -1), train.reshape(len(train), -1), 1)
        ref = train[near.idx[:, 0]]
    result = relative_energy(den, x, ref, sigma, rtol=rtol, atol=1e-8, chunk=4096)
    delta = result.delta.cpu().numpy()
    with atomic_output_dir(out, "basins relative-energy", overwrite) as tmp:
        _write_table(tmp / "relative_energy.csv", {
            "index": np.arange(len(x)), "label": _label_names(labels, len(x)),
            "delta_energy": delta, "error": result.error.cpu().numpy(),
            "converged": result.converged.cpu().numpy().astype(int)})
        summary = {"sigma": sigma, "reference": reference_path or "nearest training image",
                   "not_converged": int((~result.converged).sum()),
                   "delta_by_label": quartiles_by_label(delta, labels)}
        write_json(tmp / "summary.json", summary)
        _save_label_figure(tmp / "relative_energy.png", delta, labels,
                           "E(reference) − E(sample)", f"relative energy at σ = {sigma}",
                           log=False)
    _echo_by_label("ΔE", summary["delta_by_label"], out)


@basins.command()
@model_options
@click.option("--sigma", type=float, default=0.1, show_default=True,
              help="Noise level of the energy whose Hessian is taken.")
@click.option("--n-eigen", type=click.IntRange(min=1), default=6, show_default=True,
              help="Eigenvalues per point (Lanczos); the dense spectrum gives all.")
@click.option("--which", type=click.Choice(["SA", "LA"]), default="SA", show_default=True,
              help="SA: smallest (flat and unstable directions); LA: largest.")
@click.option("--dense-max", type=click.IntRange(min=0), default=256, show_default=True,
              help="Dense Jacobian spectrum up to this many coordinates, Lanczos above.")
def curvature(checkpoint, exact_path, samples_path, labels_path, limit, device, input_range,
              out, overwrite, sigma, n_eigen, which, dense_max):
    """Hessian spectrum of E_σ = −log p_σ at the given points: exact (dense Jacobian of the
    denoiser) in low dimension, extreme eigenvalues by Hessian-vector products and Lanczos
    for images. Summarised by the smallest eigenvalue λ_min."""
    check_output_dir(out, "basins curvature", overwrite)
    den, _, dtype = _load_model(checkpoint, exact_path, device, clip=False,
                                 input_range=input_range)
    x, labels = _points(samples_path, labels_path, limit, device, dtype, input_range)
    dim = x[0].numel()
    if n_eigen > dim:
        raise UserError(f"--n-eigen {n_eigen}: the points have D = {dim} coordinates, so at "
                        f"most {dim} eigenvalues")
    if dim <= dense_max:
        spectrum = hessian_spectrum(den, x, sigma)
        eig = spectrum.eigenvalues.numpy()
        eig = eig[:, :n_eigen] if which == "SA" else eig[:, -n_eigen:]
    else:
        eig = hessian_eigsh(den, x, sigma, n_eigen=n_eigen, which=which).eigenvalues.numpy()
    lam = eig[:, 0] if which == "SA" else eig[:, -1]
    with atomic_output_dir(out, "basins curvature", overwrite) as tmp:
        _write_table(tmp / "curvature.csv", {
            "index": np.arange(len(x)), "label": _label_names(labels, len(x)),
            **{f"eig{i}": eig[:, i] for i in range(eig.shape[1])}})
        summary = {"sigma": sigma, "which": which, "method": "dense" if dim <= dense_max
                   else "lanczos", "dim": dim, "by_label": quartiles_by_label(lam, labels)}
        write_json(tmp / "summary.json", summary)
        name = "λ_min" if which == "SA" else "λ_max"
        _save_label_figure(tmp / "curvature.png", lam * sigma**2, labels, f"{name} · σ²",
                           f"curvature of E_σ at σ = {sigma}", log=False)
    _echo_by_label(name, summary["by_label"], out)
