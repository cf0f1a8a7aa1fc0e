"""``memgen diagnose``: a model's denoiser against the exact denoiser of its training set.

Registered on the main ``memgen`` group by ``memgen.cli.main`` (same error handling: a bad
input is one line on stderr and exit status 1, found before any work, with nothing
half-written left behind). The math lives in ``memgen.probes.diagnose``, the output
folder's format in ``memgen.experiments.diagnose``.
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import torch

from memgen.cli.devices import device_option
from memgen.cli.models import checkpoint_net, model_from_options
from memgen.cli.options import (SEED, LiveCommand, input_range_option, input_ranges,
                                overwrite_option, show_progress)
from memgen.cli.source_options import ModelFlags, model_source_options
from memgen.data import DATASETS
from memgen.diffusion.loaders import load_denoiser
from memgen.diffusion.training import training_samples
from memgen.errors import UserError
from memgen.experiments.diagnose import FILES, diagnose_record, write_diagnose
from memgen.io import atomic_output_dir, check_output_dir, load_samples, row_keys
from memgen.probes.diagnose import DiagnoseConfig, default_sigmas, denoiser_error


@click.command(cls=LiveCommand)
@model_source_options(
    shape_help="C H W of --torchscript/--diffusers samples [the training set's].",
    schedule_help="Noise schedule of --exact (sets the default σ range).",
    where=lambda source: source.diagnosable,
    helps={"exact": "The exact denoiser of this training set (compared with itself: a "
                    "sanity check, RMS 0)."})
@click.option("--train", "train_path", type=click.Path(dir_okay=False),
              help="The training set whose exact denoiser is the reference [--exact's file; "
                   "train.npz beside --checkpoint].")
@click.option("--data", type=click.Choice(tuple(DATASETS)),
              help="With --checkpoint: a named data set, as memgen train.")
@click.option("--K", "K", type=int, help="With --data: the first K of the seeded split.")
@click.option("--split-seed", type=SEED, help="[3407; 42 for the circle]")
@click.option("--half", type=click.IntRange(1, 2), default=1, show_default=True,
              help="With --data: 1 the first K of the split, 2 the next K.")
@click.option("--data-root", type=click.Path(file_okay=False))
@click.option("--sigma", "sigmas", type=float, multiple=True,
              help="VE noise levels, e.g. --sigma 0.1 1 5 20 150 [--levels log-spaced over "
                   "the model's schedule].")
@click.option("--levels", type=int, default=12, show_default=True,
              help="Number of default noise levels.")
@click.option("--n", type=int, default=256, show_default=True, help="Queries per level.")
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
@input_range_option()
@device_option
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="A progress bar over the noise levels (on stderr).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output folder: diagnose.csv, diagnose.json, diagnose.png.")
@overwrite_option
def diagnose(model, shape, schedule, train_path, data, K, split_seed, half, data_root, sigmas,
             levels, n, batch_size, seed, input_range, device, progress, out, overwrite):
    """RMS error per coordinate of a model's denoiser against the exact denoiser of its
    training set, by noise level σ: where the network stops being the optimal model.
    --input-range converts the sample files read (--train, --exact) to [-1, 1]."""
    config = DiagnoseConfig(sigmas=tuple(sigmas) or None, levels=levels, n_per_level=n,
                            batch_size=batch_size, seed=seed)
    _check_source(model)
    checkpoint, exact_path = model.path("checkpoint"), model.training_set()
    file_range = input_ranges(input_range, ("file",)).get("file")
    if file_range is not None and not (train_path or exact_path):
        raise UserError("--input-range converts the sample files of --train or --exact; none "
                        "is given")
    check_output_dir(out, "diagnose", overwrite)
    train, train_name = _reference_set(train_path, data, K, split_seed, half, data_root,
                                       checkpoint, exact_path, file_range)
    loaded = model_from_options(model.paths, shape=shape or train.shape[1:], schedule=schedule,
                                device=device, input_range=file_range,
                                parameters=model.parameters)
    sched = loaded.schedule
    if tuple(loaded.shape) != train.shape[1:]:
        raise UserError(f"the model takes samples of shape {tuple(loaded.shape)} but the "
                         f"training set {train_name} has shape {train.shape[1:]}")
    levels_used = np.asarray(config.sigmas or default_sigmas(sched, config.levels))
    if not exact_path:
        _check_in_schedule(sched, levels_used)
    data_t = torch.from_numpy(train).to(device)
    # the reference in float64: the ground truth the model is measured against
    exact = load_denoiser(exact=train, device=device, exact_dtype=torch.float64).denoiser
    result = denoiser_error(loaded.denoiser, exact, data_t, levels_used,
                            n_per_level=n, generator=torch.Generator().manual_seed(seed),
                            batch_size=batch_size, progress=progress and show_progress())
    payload = diagnose_record(config, levels_used, model.paths, train_name, train, sched)
    with atomic_output_dir(out, "diagnose", overwrite) as tmp:
        write_diagnose(tmp, result, payload)
    _print_table(result)
    click.echo(f"wrote {', '.join(str(Path(out) / f) for f in FILES)}")


def _check_source(model: ModelFlags) -> None:
    """Exactly one model source, and it exists."""
    source, path = model.one()
    folder = source.folder  # the diffusers source is a folder
    if not (Path(path).is_dir() if folder else Path(path).is_file()):
        raise UserError(f"{source.flag}: no such {'folder' if folder else 'file'} {path}")


def _reference_set(train_path, data, K, split_seed, half, data_root, checkpoint, exact_path,
                   input_range=None):
    """(training set (N, ...) float32, a name for messages and diagnose.json): the
    checkpoint's own (train.npz beside it, where memgen train writes it); --train or
    --data/--K only where they are that set, or where the checkpoint records none."""
    if train_path and (data or K is not None):
        raise UserError("give either --train FILE or --data/--K, not both")
    if data or K is not None:
        if not checkpoint:
            raise UserError("--data/--K need --checkpoint (its network sets the sample "
                             "size); otherwise give --train FILE")
        name = data or "fmnist"
        samples = training_samples(checkpoint_net(checkpoint), None, name, K, split_seed,
                                   data_root, half)
        given = (samples, f"--data {name} --K {K}" + (f" --half {half}" if half != 1 else ""))
        return checkpoint_training_set(checkpoint, given, "--data/--K")
    if train_path:
        given = (load_samples(train_path, "--train", input_range), str(train_path))
        return checkpoint_training_set(checkpoint, given) if checkpoint else given
    if exact_path:
        return load_samples(exact_path, "--exact", input_range), str(exact_path)
    if not checkpoint:
        raise UserError("give the training set: --train FILE")
    return checkpoint_training_set(checkpoint)


def checkpoint_training_set(checkpoint, given: tuple[np.ndarray, str] | None = None,
                            flag: str = "--train") -> tuple[np.ndarray, str]:
    """(the training set of a memgen train checkpoint, where it came from).

    The set recorded beside it (train.npz); ``given`` (samples, name) is refused unless it
    is that same set (the same rows, in any order); without a recorded set, ``given`` is
    used as it is (a warning says it cannot be checked), and without either: UserError."""
    beside = Path(checkpoint).with_name("train.npz")
    if not beside.is_file():
        if given is None:
            raise UserError(f"no train.npz beside {checkpoint} (memgen train writes it "
                            f"there): give the training set with {flag}")
        click.echo(f"warning: {checkpoint} records no training set (no train.npz beside "
                   f"it): {given[1]} is taken on trust", err=True)
        return given
    recorded = load_samples(beside, f"train.npz beside {checkpoint}", own=True)
    if given is not None and not same_rows(given[0], recorded):
        raise UserError(f"{given[1]} is not the training set of {checkpoint}: train.npz "
                        f"beside it holds {len(recorded)} other samples of shape "
                        f"{recorded.shape[1:]}; leave out {flag} to use the checkpoint's own")
    return recorded, str(beside)


def same_rows(a: np.ndarray, b: np.ndarray) -> bool:
    """The same samples, byte for byte, in any order."""
    if a.shape != b.shape:
        return False
    rows = [sorted(row_keys(x.astype(np.float32, copy=False))) for x in (a, b)]
    return rows[0] == rows[1]


def _check_in_schedule(schedule, sigmas: np.ndarray) -> None:
    """ValueError unless the network's schedule reaches every σ (it maps σ to its t)."""
    try:
        schedule.t_from_sigma(torch.as_tensor(sigmas, dtype=torch.float64))
    except ValueError as err:
        raise UserError(f"--sigma: {err}") from None


def _print_table(result) -> None:
    click.echo(f"{'sigma':>10}{'vs exact':>12}{'95% interval':>24}{'model vs y':>13}"
               f"{'exact vs y':>13}")
    for r in result.as_rows():
        interval = f"[{r['rms_vs_exact_lo']:.4g}, {r['rms_vs_exact_hi']:.4g}]"
        click.echo(f"{r['sigma']:>10.4g}{r['rms_vs_exact']:>12.4g}{interval:>24}"
                   f"{r['rms_model_vs_clean']:>13.4g}{r['rms_exact_vs_clean']:>13.4g}")
