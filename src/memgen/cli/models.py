"""Commands that make models and samples: ``memgen train`` and ``memgen generate``.

Registered on the main ``memgen`` group by ``memgen.cli.main`` (same error handling).
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import click
import numpy as np
import torch

from memgen.cli.devices import device_option
from memgen.cli.options import (SEED, LiveCommand, OptionSlot, RegistryChoice,
                                input_range_option, input_ranges, overwrite_option,
                                show_progress)
from memgen.cli.source_options import ModelFlags, model_source_options
from memgen.data import DATASETS
from memgen.diffusion.generate import (GenerateConfig, denoised_clip, generate as generate_set,
                                       name_seed, output_bytes, sampling_ladder)
from memgen.diffusion.loaders import load_denoiser
from memgen.diffusion.model_files import read_checkpoint
from memgen.diffusion.sources import SOURCES, LoadedModel, flags
from memgen.diffusion.nets import PRESETS, get_preset
from memgen.diffusion.nets.presets import preset_parameters
from memgen.diffusion.samplers import SAMPLERS, option_names, option_owners, sampler_spec
from memgen.diffusion.schedules import VESchedule, VPSchedule
from memgen.diffusion.training import (COMPILE_MODES, TrainConfig, train as run_training,
                                       training_samples)
from memgen.errors import UserError
from memgen.io import (atomic_file, check_output_dir, claim_output_dir, load_samples,
                       output_target, write_reference_layout)


class _TrainCommand(click.Command):
    """``memgen train``: its --help ends with the presets, their data size and parameter
    count (computed only when the help is shown)."""

    def format_epilog(self, ctx, formatter):
        rows = [(name, f"{c.takes}, {preset_parameters(name):,} parameters")
                for name, c in PRESETS.items()]
        with formatter.section("Presets (--preset: the data size it takes)"):
            formatter.write_dl(rows)
        super().format_epilog(ctx, formatter)


@click.command(cls=_TrainCommand)
@click.option("--data", type=click.Choice(tuple(DATASETS)), default="fmnist", show_default=True,
              help="Data set (folder: with --data-root).")
@click.option("--train", "train_path", type=click.Path(dir_okay=False),
              help="Train on this sample file instead of --data/--K.")
@input_range_option()
@click.option("--K", "K", type=int, help="Training-set size: the first K of the seeded split.")
@click.option("--split-seed", type=SEED, help="[3407; 42 for the circle]")
@click.option("--half", type=click.IntRange(1, 2), default=1, show_default=True,
              help="1: the first K of the split; 2: the next K, disjoint from them "
                   "(for memgen hygiene halves).")
@click.option("--data-root", type=click.Path(file_okay=False))
@click.option("--preset", default=TrainConfig.preset, show_default=True,
              help="Network preset (listed below); the data must have its size.")
@click.option("--resize", is_flag=True,
              help="Resize images of another size to the preset's (bilinear, antialiased) "
                   "instead of refusing them.")
@click.option("--objective", type=click.Choice(["vp_eps", "ve_score"]),
              help="[ve_score for MLP presets, vp_eps for U-Nets]")
@click.option("--iterations", type=int, default=TrainConfig.iterations, show_default=True)
@click.option("--snapshot", "snapshots", type=int, multiple=True,
              help="Also keep the state after this many steps in --out/snapshots/ "
                   "(repeatable; the last step is always kept).")
@click.option("--batch-size", type=int, default=TrainConfig.batch_size, show_default=True,
              help="The batch is min(batch-size, K).")
@click.option("--lr", type=float, default=TrainConfig.lr, show_default=True)
@click.option("--ema", "ema_decay", type=float, default=TrainConfig.ema_decay, show_default=True,
              help="EMA decay of the weights; 0: no EMA (the EMA weights are the raw ones).")
@click.option("--ema-warmup/--no-ema-warmup", default=TrainConfig.ema_warmup, show_default=True,
              help="Decay min(ema, (1+k)/(10+k)) at step k: below 0.999 until k ≈ 9,000, so "
                   "--ema 0.999 and 0.9999 agree for the first ~9k steps. --no-ema-warmup: "
                   "the decay from the first step.")
@click.option("--seed", type=SEED, default=TrainConfig.seed, show_default=True)
@click.option("--checkpoint-every", type=int, default=TrainConfig.checkpoint_every,
              show_default=True)
@click.option("--amp", is_flag=True, help="bfloat16 autocast (CUDA only).")
@click.option("--compile", "compile_mode", type=click.Choice(COMPILE_MODES),
              default=TrainConfig.compile, show_default=True,
              help="torch.compile the loss; reduce-overhead: with CUDA graphs (GPU). Runs "
                   "eagerly, with a warning, where compiling fails.")
@device_option
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Run folder: checkpoint.pt, log.jsonl, train.npz; resumes if present.")
@overwrite_option
def train(data, train_path, input_range, K, split_seed, half, data_root, preset, resize,
          objective, iterations, snapshots, batch_size, lr, ema_decay, ema_warmup, seed,
          checkpoint_every, amp, compile_mode, device, out, overwrite):
    """Train a diffusion model on a training set (resumes from --out/checkpoint.pt).

    Several processes: torchrun --nproc-per-node N -m memgen train ... (DDP)."""
    _check_data_options(click.get_current_context(), train_path, input_range)
    net = get_preset(preset)
    if resize and net.kind != "unet":
        raise UserError(f"--resize: preset {preset} takes vectors, which are not resized")
    config = TrainConfig(preset=preset, network=net.to_dict(), iterations=iterations,
                         snapshots=tuple(sorted(set(snapshots))), batch_size=batch_size, lr=lr,
                         ema_decay=ema_decay, ema_warmup=ema_warmup, seed=seed,
                         checkpoint_every=checkpoint_every, amp=amp, compile=compile_mode,
                         objective=objective or ("ve_score" if net.kind == "mlp"
                                                 else "vp_eps"))
    check_output_dir(out, "train", overwrite, replaced=overwrite)
    ranges = input_ranges(input_range, ("train",))
    given = load_samples(train_path, "--train", ranges.get("train")) if train_path else None
    samples = training_samples(net, given, data, K, split_seed, data_root, half, resize=resize,
                               preset=preset)
    out = Path(out)
    if amp and torch.device(device).type != "cuda":
        raise UserError(f"--amp is bfloat16 autocast on CUDA; on {device} it has no effect")
    fresh = _other_training_set(out, samples, overwrite)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one process writes
        if fresh:  # --overwrite of a run on another training set: start afresh
            shutil.rmtree(output_target(out))  # a symlinked --out stays a link
        claim_output_dir(out, "train", overwrite)
        with atomic_file(out / "train.npz") as tmp:
            np.savez(tmp, samples=samples)
    state = run_training(config, torch.from_numpy(samples).to(device), out,
                         progress=show_progress())
    click.echo(f"trained {state.step} iterations on {len(samples)} samples; "
               f"wrote {out / 'checkpoint.pt'}")


def _other_training_set(out: Path, samples: np.ndarray, overwrite: bool) -> bool:
    """Whether ``out`` holds a run (checkpoint.pt) trained on another training set than
    ``samples`` (its train.npz): UserError, since resuming would finish the old model on the
    new data — or True with ``overwrite``, where the run starts afresh."""
    recorded = out / "train.npz"
    if not ((out / "checkpoint.pt").is_file() and recorded.is_file()):
        return False
    before = load_samples(recorded, f"{recorded}", own=True)
    if before.shape == samples.shape and np.array_equal(before, samples):
        return False
    if overwrite:
        return True
    other = "other values" if before.shape == samples.shape else \
        f"now {len(samples)} of shape {samples.shape[1:]}"
    raise UserError(f"{out} holds a run trained on another training set ({len(before)} "
                    f"samples of shape {before.shape[1:]}; {other}): resuming would mix them; "
                    "choose another --out or pass --overwrite to train afresh")


def _check_data_options(ctx: click.Context, train_path, input_range) -> None:
    """--train FILE is the whole training set: the options that choose one from a named
    data set would be ignored, so each one given is refused; --input-range converts a
    --train file (the named data sets are in [-1, 1] already)."""
    chooses = ("data", "K", "half", "split_seed", "data_root")
    given = [f"--{n.replace('_', '-')}" for n in chooses
             if ctx.get_parameter_source(n) not in (None, click.core.ParameterSource.DEFAULT)]
    if train_path and given:
        raise UserError(f"{', '.join(given)}: no effect with --train FILE (the file is the "
                        "whole training set); drop them")
    if input_range and not train_path:
        raise UserError("--input-range converts a --train FILE; the named data sets are "
                        "in [-1, 1] already")


class _GenerateCommand(LiveCommand):
    """``memgen generate``: its model-source and sampler-option flags read from their
    registries at each use; its --help ends with the samplers, one line each."""

    def format_epilog(self, ctx, formatter):
        with formatter.section("Samplers (--sampler)"):
            formatter.write_dl([(spec.name, spec.description) for spec in SAMPLERS.values()])
        super().format_epilog(ctx, formatter)


def _sampler_option_flags() -> list[click.Option]:
    """--NAME for every option a registered sampler reads (``SamplerSpec.options``), with
    its first owner's help line; given or None."""
    return [click.Option([f"--{name}"], type=float, default=None,
                         help=option_owners(name)[0].options[name].help)
            for name in option_names()]


sampler_option_flags = OptionSlot(
    _sampler_option_flags, lambda: tuple((s.name, id(s)) for s in SAMPLERS.values()))


@click.command(cls=_GenerateCommand)
@model_source_options(
    shape_help="C H W of the samples (--torchscript/--diffusers; others record theirs).",
    schedule_help="Noise schedule for --exact, --smoothed, --els and --gaussian (the "
                  "other sources carry their own).")
@click.option("--n", type=int, required=True, help="Number of samples.")
@click.option("--sampler", type=RegistryChoice(SAMPLERS), default=None,
              help="[ddpm for VP models, euler_maruyama for VE]")
@click.option("--steps", type=int,
              help="Sampling steps, at least 1 (VP: at most its T = 1000; VE: at least 2) "
                   "[the schedule's full ladder].")
@sampler_option_flags
@click.option("--prior", type=click.Choice(["standard", "forward"]), default="standard",
              show_default=True,
              help="Start: standard N(0, σ₀² I) (VP: DDPM's N(0, I)); forward: the forward "
                   "process's law N(μ, σ₀² I + Σ) with the training set's mean and covariance "
                   "(see --prior-data).")
@click.option("--prior-data", type=click.Path(dir_okay=False),
              help="Training set for --prior forward [the --exact file; train.npz beside "
                   "--checkpoint].")
@click.option("--clip-denoised/--no-clip-denoised", default=None,
              help="Clamp x̂₀ = D(x, σ) to --clip-range at every step (Ho et al.'s "
                   "clip_denoised; DDIM/Heun then follow the clipped field, not the model's "
                   "ODE) [on for ε-prediction models, off otherwise].")
@click.option("--clip-range", type=float, nargs=2, default=None,
              help="LO HI for --clip-denoised; refused where x̂₀ is not clipped [-1 1].")
@click.option("--seed", type=SEED, default=None,
              help="Seed of the set [derived from --name: the first 4 bytes of its sha256, "
                   "so --name eval and --name synth draw different noise].")
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--shard-size", type=int, default=1000, show_default=True)
@click.option("--name", default="samples", show_default=True, help="File name of the set.")
@input_range_option()
@device_option
@click.option("--reference-layout", "reference_K", type=click.IntRange(min=1), metavar="K",
              help="Also write OUT/reference/NAME/K.npz in the paper authors' layout (their "
                   "run_generate.py's: compressed, key samples, float32 N×C×H×W in [-1, 1]; "
                   "their run_classify.py reads a folder of <K>.npz: reference/eval and "
                   "reference/synth, as a sweep writes them).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder of the shards and NAME.npz. An interrupted run resumes there: a "
                   "shard is reused only if made by the same model (content hash) and "
                   "settings; otherwise the run stops (--overwrite: draw the set afresh).")
@overwrite_option
def generate(model, shape, schedule, n, sampler, steps, prior, prior_data, clip_denoised,
             clip_range, seed, batch_size, shard_size, name, input_range, device, reference_K,
             out, overwrite, **options):
    """Sample a set as npz shards plus a merged NAME.npz (resumable: finished shards are kept).

    Every shard has a record NAME-00000.json of what made it (model hash, sampler, steps, η,
    seed, prior, clipping, shape, schedule); NAME.json describes NAME.npz. --input-range
    converts the training sets read (--exact, --prior-data) from LO,HI to [-1, 1]."""
    given = {key: value for key, value in options.items() if value is not None}  # --eta, …
    data_range = input_ranges(input_range, ("data",)).get("data")
    exact_path = model.training_set()  # --exact's file
    if data_range is not None and not (exact_path or prior_data):
        raise UserError("--input-range converts the training set of --exact or --prior-data; "
                        "this model reads none")
    _check_generate_options(model, shape, steps, given, prior, prior_data)
    check_output_dir(out, "generate", overwrite, replaced=overwrite)
    loaded = model_from_options(model.paths, shape=shape, schedule=schedule, device=device,
                                config=model.config, input_range=data_range,
                                parameters=model.parameters)
    config = GenerateConfig(
        n=n, sampler=sampler or loaded.schedule.default_sampler, steps=steps, **given,
        seed=name_seed(name) if seed is None else seed, batch_size=batch_size,
        shard_size=shard_size, name=name, clip=len(loaded.shape) == 3, prior=prior,
        clip_denoised=clip_denoised, clip_range=tuple(clip_range or (-1.0, 1.0)))
    _check_against_model(loaded, config, given, clip_range)
    data = None
    if prior == "forward":
        from_file = prior_data or exact_path  # else memgen train's train.npz: read as written
        data = load_samples(_prior_data(prior_data, exact_path, model.path("checkpoint")),
                            "--prior-data", data_range if from_file else None,
                            own=not from_file)
        if data.shape[1:] != tuple(loaded.shape):
            raise UserError(f"--prior-data holds samples of shape {data.shape[1:]} but the "
                            f"model makes samples of shape {tuple(loaded.shape)}")
    _check_disk(out, config, loaded.shape, reference_K)
    theirs = Path(out) / "reference" / name
    if overwrite and theirs.is_dir():  # the set's copies in their layout go with the set
        shutil.rmtree(theirs)
    merged = generate_set(loaded.denoiser, loaded.shape, loaded.schedule, config,
                          claim_output_dir(out, "generate", overwrite), data=data,
                          device=device, progress=show_progress(), source=loaded.source,
                          overwrite=overwrite)
    derived = f" (seed {config.seed}, from --name {name})" if seed is None else ""
    click.echo(f"wrote {merged}{derived}")
    if reference_K is not None:
        theirs = write_reference_layout(theirs / f"{reference_K}.npz",
                                        load_samples(merged, name, own=True))
        click.echo(f"wrote {theirs} (the authors' layout)")


def _check_generate_options(model: ModelFlags, shape, steps, options: dict, prior,
                            prior_data) -> None:
    """UserError for an option generate would ignore or cannot honour, before any work:
    read from the options alone (``_check_against_model`` checks the rest); ``options``:
    the sampler options given (--eta)."""
    source, _ = model.one()
    if model.config and not source.config_help:
        raise UserError(f"--config is the YAML of {flags(lambda s: bool(s.config_help), ' or ')}")
    if shape is not None and source.records_shape:
        raise UserError(f"--shape is for {flags(lambda s: not s.records_shape, ' and ')}; this "
                        "model's samples have the shape it records (--exact: its data's)")
    schedule_given = click.get_current_context().get_parameter_source("schedule")
    if schedule_given != click.core.ParameterSource.DEFAULT and not source.schedule_option:
        raise UserError(f"--schedule is for {flags(lambda s: s.schedule_option, ' and ')}; "
                        "this model's schedule comes with it")
    if prior_data and prior != "forward":
        raise UserError("--prior-data is the training set of --prior forward; add it or "
                        "leave --prior-data out")
    if steps is not None and steps < 1:
        raise UserError(f"--steps must be at least 1, got {steps}")
    for key, value in options.items():
        owner = option_owners(key)[0]
        option = owner.options[key]
        if not option.admits(value):
            raise UserError(f"--{key} must lie in {option.interval()} ({owner.title}'s "
                            f"{option.symbol}), got {value}")


def _check_against_model(model: LoadedModel, config: GenerateConfig, options: dict,
                         clip_range) -> None:
    """UserError for options the loaded model makes meaningless: a sampler's option (--eta)
    given to a sampler without it, --steps outside its schedule, --clip-range where x̂₀ is
    not clipped."""
    spec = sampler_spec(config.sampler)
    for key in options:
        if key not in spec.options:
            owner = option_owners(key)[0]
            raise UserError(f"--{key} is {owner.title}'s {owner.options[key].symbol}; the "
                            f"{config.sampler} sampler has none (add --sampler {owner.name} "
                            f"or leave --{key} out)")
    schedule, steps = model.schedule, config.steps
    if isinstance(schedule, VPSchedule) and steps is not None and steps > schedule.T:
        raise UserError(f"--steps {steps} exceeds the model's schedule: its T = {schedule.T} "
                        f"timesteps allow 1 to {schedule.T}")
    if isinstance(schedule, VESchedule) and steps is not None and steps < 2:
        raise UserError(f"--steps {steps}: a VE ladder needs at least 2 steps")
    sampling_ladder(schedule, config)  # anything else the ladder refuses, before --out exists
    if clip_range is not None and denoised_clip(model.denoiser, config) is None:
        why = "with --no-clip-denoised" if config.clip_denoised is False else \
            "by default for this model (only ε-prediction models' is)"
        raise UserError(f"--clip-range has no effect: x̂₀ is not clipped {why}; add "
                        "--clip-denoised or leave --clip-range out")


def _check_disk(out, config: GenerateConfig, shape, reference_K) -> None:
    """UserError when the set (shards, merged NAME.npz and --reference-layout's copy) would
    not fit in the free space where --out goes; the shards already there count as written."""
    out = Path(out).absolute()
    per_sample = 4 * math.prod(shape)
    need = output_bytes(config.n, tuple(shape)) + (per_sample * config.n if reference_K else 0)
    if out.is_dir():
        need -= sum(p.stat().st_size for p in out.glob(f"{config.name}-*.npz") if p.is_file())
    above = out
    while not above.exists():
        above = above.parent
    free = shutil.disk_usage(above).free
    if need > free:
        raise UserError(f"--n {config.n} would write about {_size(need)} (shards, the merged "
                        f"{config.name}.npz{' and its reference copy' if reference_K else ''})"
                        f" but {above} has {_size(free)} free; lower --n or choose another "
                        "--out")


def _size(nbytes: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if nbytes < 1000 or unit == "TB":
            return f"{nbytes:.3g} {unit}" if unit != "B" else f"{nbytes} B"
        nbytes /= 1000


def model_from_options(paths: Mapping[str, str | None], *, shape=None, schedule=None,
                       device="cpu", config=None, input_range=None, parameters=None,
                       **options) -> LoadedModel:
    """The model of the one source given in ``paths`` ({source name: path or None}: the
    command's flags, ``ModelFlags.paths``), by ``memgen.diffusion.loaders.load_denoiser``,
    its path read by ``Source.option_value`` (--exact's as a sample file, converted from
    ``input_range`` (LO, HI) to [-1, 1]; --reference-checkpoint's with ``config``, its
    --config; a training-free source's with ``parameters``, its --smoothing, …); --schedule ("vp" | "ve") goes to the sources with ``schedule_option``,
    --shape to those that do not record theirs. options: exact_dtype, clip, ema (see
    ``load_denoiser``)."""
    given = {name: path for name, path in paths.items() if path}
    sources = [SOURCES[name] for name in given]
    network = any(not source.records_shape for source in sources)
    if network and shape is None:
        raise UserError(f"{flags(lambda s: not s.records_shape, ' and ')} need --shape C H W")
    values = {source.name: source.option_value(
        path, config=config, input_range=input_range,
        **({"parameters": parameters} if getattr(source, "parameters", ()) else {}))
        for source, path in zip(sources, given.values())}
    model = load_denoiser(**values,
                          schedule=schedule if any(s.schedule_option for s in sources) else None,
                          shape=tuple(shape) if network else None, device=device, **options)
    path = next(iter(given.values()), None)
    if model.source.path is None:  # an array's hash stays the identity; its file names it
        model = replace(model, source=replace(model.source, path=str(path)))
    return model


def _prior_data(prior_data, exact_path, checkpoint) -> str:
    """The training set of --prior forward: --prior-data, else --exact, else train.npz
    beside the checkpoint (where memgen train writes it)."""
    if prior_data or exact_path:
        return prior_data or exact_path
    beside = Path(checkpoint).with_name("train.npz") if checkpoint else None
    if beside is None or not beside.is_file():
        raise UserError("--prior forward needs the training set: give --prior-data FILE")
    return str(beside)


def checkpoint_net(path):
    """The NetConfig a ``memgen train`` checkpoint was trained with."""
    return read_checkpoint(path)[1].net
