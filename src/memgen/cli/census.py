"""``memgen census``: the attractor census of a model (``memgen.probes.census``).

Registered on the main ``memgen`` group by ``memgen.cli.main`` (same error handling).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from memgen.cli.devices import device_option
from memgen.cli.models import model_from_options
from memgen.cli.options import (SEED, LiveCommand, RegistryChoice, command_argv,
                                input_range_option, input_ranges, overwrite_option,
                                show_progress)
from memgen.cli.source_options import ModelFlags, model_source_options
from memgen.diffusion.generate import GenerateConfig, generate as generate_set, name_seed, \
    sampling_ladder
from memgen.diffusion.samplers import SAMPLERS, sampler_spec
from memgen.errors import UserError
from memgen.io import atomic_file, claim_output_dir, load_samples
from memgen.provenance import file_record, gather
from memgen.probes.census import (ENDPOINTS, KINDS, CensusRun, census_at_radii, radius_rules,
                                  write_census)


@click.command(cls=LiveCommand)
@model_source_options(
    shape_help="C H W of the samples (--torchscript/--diffusers; others record theirs).",
    schedule_help="Noise schedule for --exact, --smoothed, --els and --gaussian (the "
                  "other sources carry their own).")
@click.option("--n", type=click.IntRange(min=2), required=True,
              help="Endpoints M: seeded noises carried down a deterministic ladder.")
@click.option("--sampler", type=RegistryChoice(SAMPLERS), default="ddim", show_default=True,
              help="A deterministic sampler: ddim (at η = 0) or heun (the PF-ODE).")
@click.option("--steps", type=int, help="Sampling steps [the schedule's full ladder].")
@click.option("--radius-fraction", "fractions", type=float, multiple=True,
              default=(0.1, 0.25, 0.5), show_default=True,
              help="Radii r = f × the held-out images' median distance to their nearest "
                   "training image; several: --radius-fraction 0.1 0.25 0.5.")
@click.option("--heldout", required=True, type=click.Path(dir_okay=False),
              help="Held-out real images: set the radius and are clustered as the null.")
@click.option("--train", "train_path", type=click.Path(dir_okay=False),
              help="The training images [the --exact file; train.npz beside --checkpoint].")
@click.option("--seed", type=SEED, default=None,
              help=f"Seed of the noises [derived from the name {ENDPOINTS!r}].")
@click.option("--batch-size", type=int, default=256, show_default=True)
@input_range_option(("train", "heldout"))
@device_option
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder of endpoints.npz (resumable shards), census.csv, spurious.csv, "
                   "census.json and provenance.json.")
@overwrite_option
def census(model: ModelFlags, shape, schedule, n, sampler, steps, fractions, heldout,
           train_path, seed, batch_size, input_range, device, out, overwrite):
    """Attractor census: cluster the endpoints of deterministic sampling at radius r.

    Per radius: the clusters (attractors), the endpoint mass at training images
    (memorized: a training image within r), in recurring clusters away from them
    (spurious: ≥ 2 endpoints) and in singletons (generalized); the held-out images
    clustered alike (the null); and each spurious attractor's two nearest training
    images with its place between them (spurious.csv)."""
    if not sampler_spec(sampler).deterministic:
        raise UserError(f"--sampler {sampler} draws noise; the census needs a deterministic "
                        f"one: {', '.join(s.name for s in SAMPLERS.values() if s.deterministic)}")
    ranges = input_ranges(input_range, ("train", "heldout"))
    model.one()  # exactly one model source
    loaded = model_from_options(model.paths, shape=shape, schedule=schedule, device=device,
                                config=model.config, input_range=ranges.get("train"),
                                parameters=model.parameters)
    train_file = _train_file(train_path, model)
    train = load_samples(train_file, "--train", ranges.get("train"))
    held = load_samples(heldout, "--heldout", ranges.get("heldout"))
    for name, data in (("--train", train), ("--heldout", held)):
        if data.shape[1:] != tuple(loaded.shape):
            raise UserError(f"{name} holds samples of shape {data.shape[1:]} but the model "
                            f"makes samples of shape {tuple(loaded.shape)}")
    config = GenerateConfig(n=n, sampler=sampler, steps=steps, batch_size=batch_size,
                            seed=name_seed(ENDPOINTS) if seed is None else seed,
                            name=ENDPOINTS, clip=len(loaded.shape) == 3)
    sampling_ladder(loaded.schedule, config)  # what the ladder refuses, before --out exists
    radius_rules(train, held, fractions)  # bad fractions, held-out copies: before sampling
    folder = claim_output_dir(out, "census", overwrite)
    merged = generate_set(loaded.denoiser, loaded.shape, loaded.schedule, config, folder,
                          device=device, progress=show_progress(), source=loaded.source,
                          overwrite=overwrite)
    run = census_at_radii(load_samples(merged, ENDPOINTS, own=True), train, held, fractions)
    written = write_census(folder, run)
    inputs = {"train": file_record(train_file), "heldout": file_record(heldout),
              "endpoints": file_record(merged)}
    with atomic_file(Path(folder) / "provenance.json") as tmp:
        tmp.write_text(json.dumps(gather(inputs, command_argv()), indent=2) + "\n")
    click.echo(table(run))
    click.echo(f"wrote {', '.join(str(p) for p in written)}")


def _train_file(train_path, model: ModelFlags) -> str:
    """--train, else the --exact file, else train.npz beside --checkpoint."""
    if train_path or model.training_set():
        return train_path or model.training_set()
    checkpoint = model.path("checkpoint")
    beside = Path(checkpoint).with_name("train.npz") if checkpoint else None
    if beside is None or not beside.is_file():
        raise UserError("the census needs the training images: give --train FILE")
    return str(beside)


def table(run: CensusRun) -> str:
    """The census by radius, as printed: clusters and masses of the endpoints, then the
    null's spurious mass."""
    lines = [f"held-out median distance to the training set: {run.heldout_median:.4g} "
             f"(K = {run.n_train})",
             "fraction  radius  clusters  " + "  ".join(f"{k}(n, mass)" for k in KINDS)
             + "  null spurious mass  spurious precision (held-out)"]
    for row in run.rows:
        e = row.endpoints
        cells = "  ".join(f"{e.count(k):>6} {e.mass(k):.3f}" for k in KINDS)
        lines.append(f"{row.rule.fraction:>8g}  {row.rule.radius:.4g}  {e.n_clusters:>8}  "
                     f"{cells}  {row.null.mass('spurious'):.3f}  "
                     f"{row.precision('spurious'):.3f} ({row.heldout_precision:.3f})")
    return "\n".join(lines)
