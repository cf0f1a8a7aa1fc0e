"""``memgen r2``: r² of any model's denoiser against each training-free one
(``memgen.probes.r2``), by noise level.

Registered on the main ``memgen`` group by ``memgen.cli.main`` (same error handling).
"""

from __future__ import annotations

import csv
from pathlib import Path

import click
import torch

from memgen.cli.devices import device_option
from memgen.cli.models import model_from_options
from memgen.cli.options import (SEED, LiveCommand, input_range_option, input_ranges,
                                overwrite_option)
from memgen.cli.source_options import ModelFlags, model_source_options
from memgen.diffusion.loaders import load_denoiser
from memgen.diffusion.sources import SOURCES
from memgen.errors import UserError
from memgen.io import atomic_file, load_samples
from memgen.probes.r2 import compare


def references() -> list[str]:
    """The sources built from a training set alone (exact, smoothed, els, gaussian): the
    references a model is compared with, read from the registry."""
    return [name for name, source in SOURCES.items() if source.training_set]


def _check_arguments(sigmas, out, overwrite, inputs) -> None:
    """--sigma and --out, before any work: one-line UserErrors."""
    if not all(0 < s < float("inf") for s in sigmas):
        raise UserError(f"--sigma: noise levels must be positive and finite, got {list(sigmas)}")
    if len(set(sigmas)) != len(sigmas):  # each σ draws its own noise: two rows, two values
        raise UserError(f"--sigma: each noise level may appear only once, got {list(sigmas)}")
    if out and not overwrite and Path(out).exists():
        raise UserError(f"--out: {out} exists; pass --overwrite to replace it")
    if out and Path(out).exists() and any(Path(out).samefile(p) for p in inputs
                                          if p and Path(p).exists()):
        raise UserError(f"--out: {out} is one of the inputs; write the table elsewhere")


@click.command(cls=LiveCommand)
@model_source_options(
    shape_help="C H W of the samples (--torchscript/--diffusers; others record theirs).",
    schedule_help="Noise schedule for the training-set sources (only their ladder).")
@click.option("--train", "train_path", required=True, type=click.Path(dir_okay=False),
              help="The training set S_K the references are built from.")
@click.option("--heldout", required=True, type=click.Path(dir_okay=False),
              help="Held-out images, noised at each σ: the inputs of both denoisers.")
@click.option("--sigma", "sigmas", type=float, multiple=True, required=True,
              help="VE noise levels; several: --sigma 0.1 0.5 2.")
@click.option("--n", type=click.IntRange(min=2), default=None,
              help="The first N held-out images [all].")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@input_range_option(("train", "heldout"))
@device_option
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the table as CSV.")
@overwrite_option
def r2(model: ModelFlags, shape, schedule, train_path, heldout, sigmas, n, seed, batch_size,
       input_range, device, out, overwrite):
    """r² of a model's denoiser against the exact, smoothed, ELS and Gaussian denoisers
    of --train, per σ: pooled over the held-out images, and the median per image.

    The references are built with the --smoothing, --patch and --equivariant given (else
    their defaults); any model source may be compared, a training-free one too."""
    _check_arguments(sigmas, out, overwrite, [train_path, heldout, *model.paths.values()])
    model.one(parameters_elsewhere=True)  # --smoothing, … build the references too
    ranges = input_ranges(input_range, ("train", "heldout"))
    loaded = model_from_options(model.paths, shape=shape, schedule=schedule, device=device,
                                config=model.config, input_range=ranges.get("train"),
                                parameters=model.parameters)
    train = load_samples(train_path, "--train", ranges.get("train"))
    held = load_samples(heldout, "--heldout", ranges.get("heldout"))[:n]
    if len(held) < 2:  # the pooled r² divides by the spread of the outputs over images
        raise UserError(f"--heldout: r² needs at least 2 images, {heldout} holds {len(held)}")
    for name, data in (("--train", train), ("--heldout", held)):
        if data.shape[1:] != tuple(loaded.shape):
            raise UserError(f"{name} holds samples of shape {data.shape[1:]} but the model "
                            f"makes samples of shape {tuple(loaded.shape)}")
    refs = {}
    for name in references():
        own = {p.name for p in getattr(SOURCES[name], "parameters", ())}
        given = {k: v for k, v in model.parameters.items() if k in own}
        try:
            refs[name] = load_denoiser(**{name: (train, given) if own else train},
                                       device=device).denoiser
        except UserError as err:  # a reference these data do not fit (ELS: images only)
            if given:  # --patch 4, --smoothing -1: the user's own value is wrong
                raise
            click.echo(f"{name}: skipped ({err})")
    x = torch.from_numpy(held).to(device)
    rows = compare(loaded.denoiser, refs, x, sigmas, torch.Generator().manual_seed(seed),
                   batch_size)
    click.echo("sigma  reference  r2  median_r2  n")
    for name, row in rows:
        click.echo(f"{row.sigma:<6g} {name:<9}  {row.r2:.4f}  {row.median_r2:.4f}  {row.n}")
    if any(row.r2 != row.r2 or row.median_r2 != row.median_r2 for _, row in rows):
        click.echo("nan: the reference's outputs do not vary over the inputs (r² undefined)")
    if out:
        with atomic_file(out) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["sigma", "reference", "r2", "median_r2", "n"])
            writer.writerows([row.sigma, name, f"{row.r2:.6g}", f"{row.median_r2:.6g}", row.n]
                             for name, row in rows)
        click.echo(f"wrote {out}")
