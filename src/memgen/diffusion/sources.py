"""Model sources as objects: one registered class per kind of model memgen runs.

A source states everything that follows from where a denoiser comes from: its names
(``load_denoiser``'s keyword and the identity record's kind, ``memgen generate``'s flag,
the sweep's ``model.kind``), how it builds the denoiser and schedule, what identifies it
(``ModelSource``'s content hash; the sweep train key's trajectory part), its schedule
family and so its default sampler, whether the sweep trains it, which model fields it
reads, its default data split, whether the sweep exports the authors' layout, and the
state a sweep samples each K from. ``SOURCES`` holds them, in the order
``load_denoiser`` names them:

    name         what                                         model.kind    trains
    checkpoint   a ``memgen train`` checkpoint.pt              network       yes
    exact        the empirical denoiser of the training set   exact         no
    torchscript  an ε-model file eps = model(x_t, t)          (no sweeps)
    diffusers    a diffusers ``UNet2DModel`` folder            (no sweeps)
    reference    the authors' K.pt (``diffusion.reference``)  checkpoints   no
    smoothed     the smoothed closed-form denoiser of S_K     smoothed      no
                 (Scarvelis et al. 2023; model.smoothing)
    els          the equivariant local score machine of S_K   els           no
                 (Kamb & Ganguli 2024; model.patch, .equivariant)
    gaussian     the optimal linear (Gaussian) denoiser of S_K gaussian     no

The last three are training-free generalizers (``memgen.diffusion.analytic``): built from
the training set as the exact denoiser is, with their numbers (``AnalyticSource.parameters``:
``memgen generate --smoothing``, ``--patch``, ``--equivariant``; the sweep's model fields of
the same names, keyed in the train key through ``trajectory``).

A checkpoint carries its network, objective and schedule; TorchScript and diffusers are
VP ε-prediction with integer-valued t on the DDPM linear schedule unless told; the
authors' networks are ε-prediction on their schedule, which is ``VPSchedule()``.

Precision. Networks run in float32 (their weights). The exact denoiser runs in the dtype
of its stored patterns, ``exact_dtype``, float32 by default: the sample files' own dtype,
in which ``memgen generate``, ``memgen diagnose``'s model and the sweep's generate and
analysis stages have always run it (their stored samples and cache keys depend on those
bits). The attractor probes of ``memgen basins`` and diagnose's reference ask for
float64: a bisection on the recovery probability, Hessian spectra and energy integrals
along a path need the softmax weights to more digits than float32 keeps at small σ.

Adding a source: a subclass of ``Source`` registered in ``SOURCES``; the sweep config's
``model.kind`` choices, its checks, stage keys and stages read it from here, and so do
``memgen generate`` and ``memgen diagnose`` (``memgen.cli.source_options``): its ``flag``
with its ``help`` line, a file or a ``folder``, what ``option_value`` makes of the path.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import torch

from memgen.diffusion.analytic_sources import (AnalyticSource, ELSSource,  # noqa: F401
                                               GaussianSource, SmoothedSource, SourceParameter)
from memgen.diffusion.model_files import (check_eps_shape, diffusers_net, read_checkpoint,
                                           sample_shape, torchscript_net)
from memgen.diffusion.denoisers import EmpiricalDenoiser, EpsDenoiser, ScoreDenoiser
from memgen.diffusion.identity import ModelSource, array_sha256, folder_sha256
from memgen.diffusion.nets import NetConfig, get_preset
from memgen.diffusion.reference import load_reference
from memgen.diffusion.schedules import VPSchedule
from memgen.diffusion.source_base import (SCHEDULES, LoadedModel, LoadOptions,  # noqa: F401
                                          Source, parse_schedule)
from memgen.errors import UserError
from memgen.io import load_samples
from memgen.provenance import file_sha256

# ------------------------------------------------------------------------------ sources


class CheckpointSource(Source):
    """A ``memgen train`` checkpoint: its EMA weights (or the raw ones without ``ema``),
    its network, objective, schedule and sample shape."""

    name, flag, sweep_kind, trains = "checkpoint", "--checkpoint", "network", True
    help = "A memgen train checkpoint."
    model_fields = ("preset", "net", "objective")

    def build(self, path, options: LoadOptions) -> LoadedModel:
        if options.schedule is not None:
            raise UserError("a checkpoint carries its own schedule")
        payload, config = read_checkpoint(path, map_location=options.device)
        net = replace(config.net, seed=config.seed).build().to(options.device)
        try:
            net.load_state_dict(payload["ema" if options.ema else "model"])
        except (RuntimeError, TypeError, AttributeError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise UserError(f"{path}: its weights do not fit its network ({first})") from None
        net.eval().requires_grad_(False)  # gradients flow to x only (Hessians, divergences)
        schedule = config.schedule()
        if config.objective == "vp_eps":
            denoiser = EpsDenoiser(net, schedule, clip=options.clip)
        else:
            denoiser = ScoreDenoiser(net, schedule)
        source = ModelSource(self.name, str(path), lambda: file_sha256(path))
        return LoadedModel(denoiser, schedule, sample_shape(config.net), torch.float32, source)

    def sweep_model(self, model, state, train, device) -> LoadedModel:
        return self.load(state, LoadOptions(device=device))

    def schedule_family(self, model) -> str:
        return "ve" if objective(model) == "ve_score" else "vp"

    def trajectory(self, model, K, training, file_key) -> dict:
        return {**training, "network": network(model).to_dict()}

    def check_model(self, model) -> None:
        """The network must exist and build (on the meta device: no memory, no time)."""
        if model.net is not None and model.preset is not None:
            raise UserError("model: give model.preset or model.net, not both")
        try:
            net = network(model)
            with torch.device("meta"):
                net.build()
        except ValueError as err:
            where = "net" if model.net is not None else "preset"
            raise UserError(f"model.{where}: {err}") from None


def network(model) -> NetConfig:
    """The network a model section describes: ``net``, else its preset [toy-mlp]."""
    return model.net if model.net is not None else get_preset(model.preset or "toy-mlp")


def objective(model) -> str:
    """A network's objective: model.objective, else ve_score for MLPs, vp_eps for U-Nets."""
    return model.objective or ("ve_score" if network(model).kind == "mlp" else "vp_eps")


class ExactSource(Source):
    """The exact empirical denoiser of a training set (N, ...) in ``exact_dtype`` (see the
    module docstring), with ``schedule`` ("vp", "ve", a schedule, or None for none) only
    for the samplers' ladder: the positive control, no network."""

    name, flag, sweep_kind = "exact", "--exact", "exact"
    training_set = True
    help = "Use the exact empirical denoiser of this training set (positive control)."
    model_fields = ("schedule",)
    no_network = "the exact denoiser is not a network"
    schedule_option = True

    def option_value(self, path, *, config=None, input_range=None):
        """The training set of a sample file, converted from ``input_range`` to [-1, 1]."""
        return load_samples(path, self.flag, input_range)

    def build(self, exact, options: LoadOptions) -> LoadedModel:
        patterns = torch.as_tensor(exact).to(device=options.device, dtype=options.exact_dtype)
        source = ModelSource(self.name, None, lambda: array_sha256(exact))
        return LoadedModel(EmpiricalDenoiser(patterns), parse_schedule(options.schedule),
                           tuple(patterns.shape[1:]), options.exact_dtype, source)

    def sweep_model(self, model, state, train, device) -> LoadedModel:
        """S_K's exact denoiser in float32 (the sweep's stored samples depend on it)."""
        return self.load(train, LoadOptions(schedule=model.schedule, device=device))

    def schedule_family(self, model) -> str:
        return model.schedule

    def untrained(self, model, K: int) -> str:
        return "the exact denoiser"


class EpsModelSource(Source):
    """A VP ε-model from a file or folder: ``schedule`` its VP schedule [VPSchedule()],
    ``shape`` its sample shape (required: the model does not record it)."""

    records_shape = False

    def build(self, path, options: LoadOptions) -> LoadedModel:
        if options.shape is None:
            raise UserError("a TorchScript or diffusers model needs the sample shape (C, H, W)")
        vp = parse_schedule(options.schedule or "vp")
        if not isinstance(vp, VPSchedule):
            raise UserError("a TorchScript or diffusers ε-model needs a VP schedule")
        net = self.read(path, options.device)
        source = ModelSource(self.name, str(path), lambda: self.content(path))
        check_eps_shape(net, vp, tuple(options.shape), options.device, source.label())
        return LoadedModel(EpsDenoiser(net, vp, clip=options.clip), vp, tuple(options.shape),
                           torch.float32, source)

    # read(path, device): the network, eps = net(x_t, t); content(path): the sha256 of what
    # path holds (each subclass's own reader and hash)
    read: ClassVar[Callable[[str, torch.device], Callable]]
    content: ClassVar[Callable[[str], str]]


class TorchScriptSource(EpsModelSource):
    name, flag = "torchscript", "--torchscript"
    help = "A TorchScript ε-model eps = model(x_t, t) (VP, DDPM linear schedule)."
    read, content = staticmethod(torchscript_net), staticmethod(file_sha256)


class DiffusersSource(EpsModelSource):
    name, flag, folder = "diffusers", "--diffusers", True
    help = "A diffusers UNet2DModel folder (needs the diffusers extra)."
    read, content = staticmethod(diffusers_net), staticmethod(folder_sha256)


class ReferenceSource(Source):
    """The paper authors' ``K.pt`` as (path, config): config their YAML's path, a mapping
    of its model: keys, or None for the checkpoint's args; their network as an
    ε-prediction VP denoiser on their schedule (``ema`` as for a checkpoint). In a sweep:
    ``<K>.pt`` of the folder model.path, on their own subsets, sampled as they did, with
    S_eval and S′ also in their layout."""

    name, flag, sweep_kind = "reference", "--reference-checkpoint", "checkpoints"
    help = "A K.pt of the paper authors' train_unet.py (their DDPM U-Net, EMA weights)."
    config_help = "Their YAML config of --reference-checkpoint [the checkpoint's own args]."
    diagnosable = False  # diagnose needs the training set: theirs are their own subsets
    model_fields = ("path", "reference_config")
    no_network = "the authors' checkpoints carry their own network"
    split, exports_reference, analysable = "reference", True, False

    def option_value(self, path, *, config=None, input_range=None):
        return (path, config or None)

    def build(self, reference, options: LoadOptions) -> LoadedModel:
        if options.schedule is not None:
            raise UserError("a reference checkpoint carries its own schedule (their DDPM's)")
        if not isinstance(reference, (tuple, list)) or len(reference) != 2:
            raise UserError("reference must be a pair (checkpoint path, config or None)")
        loaded = load_reference(reference[0], reference[1], ema=options.ema)
        if loaded.config.prediction_type != "epsilon":
            raise UserError(f"{reference[0]}: memgen loads their ε-prediction networks; this "
                            f"one was trained with prediction_type "
                            f"{loaded.config.prediction_type!r}")
        net = loaded.net.to(options.device).requires_grad_(False)  # gradients flow to x only
        schedule = loaded.config.schedule()
        path, their_config = reference
        source = ModelSource(self.name, str(path),
                             lambda: reference_sha256(path, their_config))
        return LoadedModel(EpsDenoiser(net, schedule, clip=options.clip), schedule,
                           loaded.config.shape, torch.float32, source)

    def sweep_model(self, model, state, train, device) -> LoadedModel:
        return self.load((state, model.reference_config), LoadOptions(device=device))

    def checkpoint(self, model, K: int) -> Path:
        """The authors' checkpoint of training-set size K."""
        return Path(model.path) / f"{K}.pt"

    def trajectory(self, model, K, training, file_key) -> dict:
        """The content of K.pt and of their YAML, if given (not their paths)."""
        given = model.reference_config
        return {"checkpoint": file_key(self.checkpoint(model, K)),
                "reference_config": None if given is None else file_key(given)}

    def state_file(self, model, K, train_folder, steps) -> Path:
        return self.checkpoint(model, K)

    def untrained(self, model, K: int) -> str:
        return f"the authors' {self.checkpoint(model, K)}"

    def check_model(self, model) -> None:
        if model.path is None:
            raise UserError("model.path: give the folder of the authors' <K>.pt files "
                            "(model.kind = checkpoints)")

    def check_split(self, split: str) -> None:
        if split != "reference":
            raise UserError("data.split: the authors' checkpoints were trained on their own "
                            "subsets; model.kind = checkpoints needs data.split = reference")

    def check_files(self, model, Ks) -> None:
        """One <K>.pt per K in model.path, and their YAML if given."""
        if not Path(model.path).is_dir():
            raise UserError(f"model.path: no such folder {model.path} (the authors' <K>.pt "
                            "files)")
        missing = [self.checkpoint(model, K).name for K in Ks
                   if not self.checkpoint(model, K).is_file()]
        if missing:
            raise UserError(f"model.path: {model.path} has no {', '.join(missing)} (one "
                            "<K>.pt per K of Ks)")
        if model.reference_config is not None and not Path(model.reference_config).is_file():
            raise UserError(f"model.reference_config: no such file {model.reference_config}")


def reference_sha256(path, config) -> str:
    """The authors' checkpoint's bytes with their config: its file's bytes, the mapping
    given, or nothing (the checkpoint's own args)."""
    h = hashlib.sha256(file_sha256(path).encode())
    if isinstance(config, (str, Path)):
        h.update(b"config file " + file_sha256(config).encode())
    elif config is not None:
        h.update(b"config " + json.dumps(config, sort_keys=True, default=repr).encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------- registry


SOURCES: dict[str, Source] = {source.name: source for source in (
    CheckpointSource(), ExactSource(), TorchScriptSource(), DiffusersSource(),
    ReferenceSource(), SmoothedSource(), ELSSource(), GaussianSource())}


class SweepKinds(Mapping):
    """model.kind → its source: a live view of ``SOURCES`` (those with a sweep kind, in
    their order), so a source registered later is a choice too."""

    def __getitem__(self, kind: str) -> Source:
        for source in SOURCES.values():
            if source.sweep_kind is not None and source.sweep_kind == kind:
                return source
        raise KeyError(kind)

    def __iter__(self) -> Iterator[str]:
        return (s.sweep_kind for s in SOURCES.values() if s.sweep_kind is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


SWEEP_KINDS = SweepKinds()


def flags(where: Callable[[Source], bool] = lambda source: True, sep: str = ", ") -> str:
    """The CLI flags of the sources ``where`` holds for, for a message."""
    return sep.join(source.flag for source in SOURCES.values() if where(source))


def model_source(model) -> Source:
    """The source of a sweep's model section (by model.kind)."""
    return SWEEP_KINDS[model.kind]


def keyed_by_sources() -> tuple[str, ...]:
    """The model fields that the train key leaves out of the model section: those a
    source keys itself (``trajectory``): model.path and reference_config by their files'
    content; the training-free sources' parameters, only where they act (so that the
    keys of the other kinds stay those of before these fields existed)."""
    params = [p.name for s in SOURCES.values() for p in getattr(s, "parameters", ())]
    return ("path", "reference_config", *dict.fromkeys(params))


def parameter_specs() -> dict[str, tuple[SourceParameter, list[Source]]]:
    """name → (its SourceParameter, the sources that read it) over ``SOURCES``."""
    out: dict = {}
    for source in SOURCES.values():
        for p in getattr(source, "parameters", ()):
            out.setdefault(p.name, (p, []))[1].append(source)
    return out


def sweep_field_users(field: str) -> list[str]:
    """The model.kind values whose source reads model.``field``."""
    return [kind for kind, source in SWEEP_KINDS.items() if field in source.model_fields]
