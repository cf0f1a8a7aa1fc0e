"""Every denoiser memgen runs, built from its source in one place (``load_denoiser``).

Sources: a ``memgen train`` checkpoint (its config names the network, the objective and
the schedule), the exact empirical denoiser of a training set (the positive control, no
network), a TorchScript ε-model ``eps = model(x_t, t)`` and a diffusers ``UNet2DModel``
folder (VP ε-prediction, integer-valued t, the DDPM linear schedule unless told), and a
checkpoint of the paper authors' own code (``reference=(K.pt, their YAML or None)``, see
``memgen.diffusion.reference``: ε-prediction on their schedule, which is ``VPSchedule()``).

Precision. Networks run in float32 (their weights). The exact denoiser runs in the dtype
of its stored patterns, ``exact_dtype``, float32 by default: the sample files' own dtype,
in which ``memgen generate``, ``memgen diagnose``'s model and the sweep's generate and
analysis stages have always run it (their stored samples and cache keys depend on those
bits). The attractor probes of ``memgen basins`` and diagnose's reference (the ground
truth a model is measured against) ask for float64, as they always have: a bisection on
the recovery probability, Hessian spectra and energy integrals along a path need the
softmax weights to more digits than float32 keeps at small σ. The two dtypes give
different bits, so each caller states its own.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from memgen.diffusion.denoisers import Denoiser, EmpiricalDenoiser, EpsDenoiser, ScoreDenoiser
from memgen.diffusion.nets import NetConfig
from memgen.diffusion.reference import load_reference
from memgen.diffusion.schedules import VESchedule, VPSchedule
from memgen.diffusion.training import TrainConfig, load_checkpoint
from memgen.errors import UserError

SOURCES = ("checkpoint", "exact", "torchscript", "diffusers", "reference")
SCHEDULES = {"vp": VPSchedule, "ve": VESchedule}


@dataclass(frozen=True)
class LoadedModel:
    """A denoiser with what its callers need to run it."""

    denoiser: Denoiser
    schedule: VPSchedule | VESchedule | None  # None: the exact denoiser without a schedule
    shape: tuple[int, ...]  # one sample: (D,) or (C, H, W)
    dtype: torch.dtype  # what it computes in: float32 for networks, exact_dtype otherwise


def load_denoiser(*, checkpoint: str | Path | None = None,
                  exact: np.ndarray | torch.Tensor | None = None,
                  torchscript: str | Path | None = None, diffusers: str | Path | None = None,
                  reference: tuple | None = None,
                  schedule: VPSchedule | VESchedule | str | None = None,
                  shape: tuple[int, ...] | None = None, device: str | torch.device = "cpu",
                  exact_dtype: torch.dtype = torch.float32, clip: bool = False,
                  ema: bool = True) -> LoadedModel:
    """The denoiser of exactly one source, on ``device``.

    checkpoint: a checkpoint file (its EMA weights, or the raw ones without ``ema``); it
        carries its schedule and sample shape.
    exact: the training set (N, ...); its exact denoiser in ``exact_dtype`` (see the module
        docstring), with ``schedule`` ("vp", "ve", a schedule, or None for none) only for
        the samplers' ladder.
    torchscript, diffusers: an ε-model file or folder; ``schedule`` its VP schedule
        [VPSchedule()], ``shape`` its sample shape (required: the model does not record it).
    reference: (path, config) of the authors' ``K.pt`` (``ema`` as for checkpoint), config
        their YAML's path, a mapping of its model: keys, or None for the checkpoint's args;
        it carries its schedule and sample shape.
    clip: clamp an ε-model's x̂₀ to [−1, 1] (``EpsDenoiser``); no effect on the others.
    """
    given = [name for name, value in zip(SOURCES, (checkpoint, exact, torchscript, diffusers,
                                                   reference)) if value is not None]
    if len(given) != 1:
        raise UserError(f"give exactly one model source ({', '.join(SOURCES)}), got "
                        f"{', '.join(given) or 'none'}")
    if shape is not None and given[0] in ("checkpoint", "exact", "reference"):
        raise UserError(f"shape is for TorchScript and diffusers models; a {given[0]} "
                        "source has its own")
    if checkpoint is not None:
        if schedule is not None:
            raise UserError("a checkpoint carries its own schedule")
        return _from_checkpoint(checkpoint, device, clip, ema)
    if reference is not None:
        if schedule is not None:
            raise UserError("a reference checkpoint carries its own schedule (their DDPM's)")
        return _from_reference(reference, device, clip, ema)
    if exact is not None:
        patterns = torch.as_tensor(exact).to(device=device, dtype=exact_dtype)
        return LoadedModel(EmpiricalDenoiser(patterns), _schedule(schedule),
                           tuple(patterns.shape[1:]), exact_dtype)
    if shape is None:
        raise UserError("a TorchScript or diffusers model needs the sample shape (C, H, W)")
    vp = _schedule(schedule or "vp")
    if not isinstance(vp, VPSchedule):
        raise UserError("a TorchScript or diffusers ε-model needs a VP schedule")
    net = _torchscript(torchscript, device) if torchscript is not None else \
        _diffusers(diffusers, device)
    return LoadedModel(EpsDenoiser(net, vp, clip=clip), vp, tuple(shape), torch.float32)


def _schedule(schedule):
    if schedule is None or isinstance(schedule, (VPSchedule, VESchedule)):
        return schedule
    if schedule not in SCHEDULES:
        raise UserError(f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
    return SCHEDULES[schedule]()


def _from_checkpoint(path, device, clip: bool, ema: bool) -> LoadedModel:
    payload = load_checkpoint(path, map_location=device)
    config = TrainConfig.from_json(payload["config"])
    net = replace(config.net, seed=config.seed).build().to(device)
    net.load_state_dict(payload["ema" if ema else "model"])
    net.eval().requires_grad_(False)  # gradients flow to x only (Hessians, divergences)
    schedule = config.schedule()
    if config.objective == "vp_eps":
        denoiser = EpsDenoiser(net, schedule, clip=clip)
    else:
        denoiser = ScoreDenoiser(net, schedule)
    return LoadedModel(denoiser, schedule, sample_shape(config.net), torch.float32)


def _from_reference(reference, device, clip: bool, ema: bool) -> LoadedModel:
    """The authors' network as an ε-prediction VP denoiser on their schedule."""
    if not isinstance(reference, (tuple, list)) or len(reference) != 2:
        raise UserError("reference must be a pair (checkpoint path, config or None)")
    loaded = load_reference(reference[0], reference[1], ema=ema)
    if loaded.config.prediction_type != "epsilon":
        raise UserError(f"{reference[0]}: memgen loads their ε-prediction networks; this one "
                        f"was trained with prediction_type {loaded.config.prediction_type!r}")
    net = loaded.net.to(device).requires_grad_(False)  # gradients flow to x only
    schedule = loaded.config.schedule()
    return LoadedModel(EpsDenoiser(net, schedule, clip=clip), schedule, loaded.config.shape,
                       torch.float32)


def sample_shape(net: NetConfig) -> tuple[int, ...]:
    """One sample of a network: (dim,) for an MLP, (channels, size, size) for a U-Net."""
    return (net.dim,) if net.kind == "mlp" else (net.channels, net.image_size, net.image_size)


def _torchscript(path, device):
    """A TorchScript archive: code and tensors, no pickled Python objects."""
    if not Path(path).is_file():
        raise UserError(f"no such TorchScript file: {path}")
    try:
        return torch.jit.load(str(path), map_location=device).eval()
    except RuntimeError as err:  # not a TorchScript archive (torch says so in its first line)
        raise UserError(f"cannot read TorchScript file {path} "
                        f"({str(err).splitlines()[0]})") from None


def _diffusers(path, device):
    try:
        from diffusers import UNet2DModel  # optional: the diffusers extra
    except ImportError:
        raise UserError("loading a diffusers model needs "
                        "`pip install diffusers`") from None

    unet = UNet2DModel.from_pretrained(str(path), local_files_only=True).to(device).eval()
    return lambda x, t: unet(x, t).sample
