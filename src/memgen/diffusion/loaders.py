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

Identity. Each loaded model carries its ``ModelSource``: the kind of source, its path and
a sha256 of its content (the checkpoint's bytes; the training set's array for the exact
denoiser; the TorchScript file; every file of a diffusers folder; the reference
checkpoint and its config), computed on first use. ``memgen generate`` records it with
every shard, so a shard drawn from other weights is never taken for this model's.
``denoiser_sha256`` fingerprints a denoiser built in Python (its tensors and settings).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from memgen.diffusion.denoisers import Denoiser, EmpiricalDenoiser, EpsDenoiser, ScoreDenoiser
from memgen.diffusion.nets import NetConfig
from memgen.diffusion.parameterization import network_time
from memgen.diffusion.reference import load_reference
from memgen.diffusion.schedules import VESchedule, VPSchedule
from memgen.diffusion.training import TrainConfig, load_checkpoint
from memgen.errors import UserError
from memgen.provenance import file_sha256

SOURCES = ("checkpoint", "exact", "torchscript", "diffusers", "reference")
SCHEDULES = {"vp": VPSchedule, "ve": VESchedule}


@dataclass(frozen=True, eq=False)
class ModelSource:
    """Where a model came from: ``kind`` (one of SOURCES), its ``path`` (None for an array
    given in memory) and ``sha256``, the hash of its content, computed on first use."""

    kind: str
    path: str | None
    content: Callable[[], str] = dataclasses.field(repr=False)  # returns the sha256

    @cached_property
    def sha256(self) -> str:
        return self.content()

    def identity(self) -> dict:
        """What identifies the model (not where it lies): {"kind", "sha256"}."""
        return {"kind": self.kind, "sha256": self.sha256}

    def label(self) -> str:
        """The model in a message: "torchscript eps.pt", "exact denoiser of (6, 1, 8, 8)"."""
        return f"{self.kind} {self.path}" if self.path else f"{self.kind} model"


@dataclass(frozen=True)
class LoadedModel:
    """A denoiser with what its callers need to run it."""

    denoiser: Denoiser
    schedule: VPSchedule | VESchedule | None  # None: the exact denoiser without a schedule
    shape: tuple[int, ...]  # one sample: (D,) or (C, H, W)
    dtype: torch.dtype  # what it computes in: float32 for networks, exact_dtype otherwise
    source: ModelSource | None = None  # what it was loaded from, and its content hash


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
        source = ModelSource("exact", None, lambda: array_sha256(exact))
        return LoadedModel(EmpiricalDenoiser(patterns), _schedule(schedule),
                           tuple(patterns.shape[1:]), exact_dtype, source)
    if shape is None:
        raise UserError("a TorchScript or diffusers model needs the sample shape (C, H, W)")
    vp = _schedule(schedule or "vp")
    if not isinstance(vp, VPSchedule):
        raise UserError("a TorchScript or diffusers ε-model needs a VP schedule")
    if torchscript is not None:
        net = _torchscript(torchscript, device)
        source = ModelSource("torchscript", str(torchscript), lambda: file_sha256(torchscript))
    else:
        net = _diffusers(diffusers, device)
        source = ModelSource("diffusers", str(diffusers), lambda: folder_sha256(diffusers))
    check_eps_shape(net, vp, tuple(shape), device, source.label())
    return LoadedModel(EpsDenoiser(net, vp, clip=clip), vp, tuple(shape), torch.float32,
                       source)


def check_eps_shape(net, schedule: VPSchedule, shape: tuple[int, ...], device,
                    label: str) -> None:
    """UserError unless ``net`` maps one input of ``shape`` to an ε of the same shape: a
    single forward at mid-schedule, so a model of another size or channel count (or a wrong
    --shape) is said before any work, not as a broadcasting failure mid-sampling."""
    x = torch.zeros(1, *shape, device=device)
    _, t = network_time(schedule, float(schedule.sigma(schedule.T // 2)), x)
    expected = " ".join(map(str, shape))
    try:
        with torch.no_grad():
            eps = net(x, t)
    except Exception as err:  # noqa: BLE001 - any failure here is a model/shape mismatch
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"{label} fails on an input of shape {tuple(x.shape)} (--shape "
                        f"{expected}): {first}") from None
    if not isinstance(eps, torch.Tensor) or tuple(eps.shape) != tuple(x.shape):
        got = tuple(eps.shape) if isinstance(eps, torch.Tensor) else type(eps).__name__
        raise UserError(f"{label} returns {got} for an input of shape {tuple(x.shape)}; "
                        f"expected ε of the input's shape (C H W = {expected}: check --shape "
                        "and the model's channel count)")


def _schedule(schedule):
    if schedule is None or isinstance(schedule, (VPSchedule, VESchedule)):
        return schedule
    if schedule not in SCHEDULES:
        raise UserError(f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
    return SCHEDULES[schedule]()


CHECKPOINT_KEYS = ("config", "model", "ema")  # what every memgen train checkpoint holds


def read_checkpoint(path, map_location="cpu") -> tuple[dict, TrainConfig]:
    """(payload, its TrainConfig) of a ``memgen train`` checkpoint; UserError for any other
    file torch can read, such as a bare state dict saved with ``torch.save``."""
    payload = load_checkpoint(path, map_location=map_location)
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(payload, dict) or k not in payload]
    if missing:
        held = _contents(payload)
        raise UserError(f"{path} is not a memgen train checkpoint (it holds {held}, no "
                        f"{', '.join(missing)}; a bare state dict?): give a checkpoint.pt "
                        "written by memgen train, or your network as --torchscript")
    try:
        config = TrainConfig.from_json(payload["config"])
    except (TypeError, ValueError) as err:
        raise UserError(f"{path}: unreadable training config ({err})") from None
    return payload, config


def _contents(payload) -> str:
    """What a loaded file holds, for a message: "keys a, b, c, …" or "a list"."""
    if not isinstance(payload, dict):
        return f"a {type(payload).__name__}"
    keys = [str(k) for k in list(payload)[:3]]
    return "keys " + ", ".join(keys) + (", …" if len(payload) > 3 else "") if keys else \
        "an empty dict"


def _from_checkpoint(path, device, clip: bool, ema: bool) -> LoadedModel:
    payload, config = read_checkpoint(path, map_location=device)
    net = replace(config.net, seed=config.seed).build().to(device)
    try:
        net.load_state_dict(payload["ema" if ema else "model"])
    except (RuntimeError, TypeError, AttributeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"{path}: its weights do not fit its network ({first})") from None
    net.eval().requires_grad_(False)  # gradients flow to x only (Hessians, divergences)
    schedule = config.schedule()
    if config.objective == "vp_eps":
        denoiser = EpsDenoiser(net, schedule, clip=clip)
    else:
        denoiser = ScoreDenoiser(net, schedule)
    source = ModelSource("checkpoint", str(path), lambda: file_sha256(path))
    return LoadedModel(denoiser, schedule, sample_shape(config.net), torch.float32, source)


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
    path, their_config = reference
    source = ModelSource("reference", str(path), lambda: _reference_sha256(path, their_config))
    return LoadedModel(EpsDenoiser(net, schedule, clip=clip), schedule, loaded.config.shape,
                       torch.float32, source)


def _reference_sha256(path, config) -> str:
    """The authors' checkpoint's bytes with their config: its file's bytes, the mapping
    given, or nothing (the checkpoint's own args)."""
    h = hashlib.sha256(file_sha256(path).encode())
    if isinstance(config, (str, Path)):
        h.update(b"config file " + file_sha256(config).encode())
    elif config is not None:
        h.update(b"config " + json.dumps(config, sort_keys=True, default=repr).encode())
    return h.hexdigest()


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


# ------------------------------------------------------------------------- content hashes


def folder_sha256(path) -> str:
    """sha256 over every file of a folder: relative paths (sorted) and their bytes' hashes."""
    h = hashlib.sha256()
    root = Path(path)
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f"{file.relative_to(root).as_posix()} {file_sha256(file)}\n".encode())
    return h.hexdigest()


def array_sha256(array) -> str:
    """sha256 of an array's dtype, shape and bytes (C order); a tensor is read on the CPU."""
    h = hashlib.sha256()
    _feed_array(h, array)
    return h.hexdigest()


def _feed_array(h, array) -> None:
    if isinstance(array, torch.Tensor):
        t = array.detach().cpu().contiguous()
        h.update(f"tensor {t.dtype} {tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return
    a = np.ascontiguousarray(array)
    h.update(f"array {a.dtype.str} {a.shape}|".encode())
    h.update(a.tobytes())


def denoiser_sha256(denoiser) -> str:
    """A fingerprint of a denoiser built in Python: its class, tensors (a network's state
    dict), numbers and settings, walked through its attributes. Functions count by name
    only: for a model from a file, its ``ModelSource`` hash says more."""
    h = hashlib.sha256()
    _feed(h, denoiser, 0)
    return h.hexdigest()


def _feed(h, obj, depth: int) -> None:
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        _feed_array(h, obj)
    elif isinstance(obj, torch.nn.Module):
        h.update(f"module {type(obj).__qualname__}|".encode())
        for key, value in obj.state_dict().items():
            h.update(f"{key}=".encode())
            _feed_array(h, value)
    elif obj is None or isinstance(obj, (bool, int, float, str, torch.dtype, torch.device)):
        h.update(f"{obj!r}|".encode())
    elif dataclasses.is_dataclass(obj):
        h.update(f"{obj!r}|".encode())  # schedules and configs: their fields
    elif isinstance(obj, (list, tuple)):
        h.update(f"{type(obj).__name__}[".encode())
        for item in obj:
            _feed(h, item, depth + 1)
        h.update(b"]")
    elif isinstance(obj, dict):
        for key in sorted(obj, key=repr):
            h.update(f"{key!r}:".encode())
            _feed(h, obj[key], depth + 1)
    elif depth < 4 and hasattr(obj, "__dict__") and not _named(obj):
        h.update(f"object {type(obj).__qualname__}|".encode())
        for key in sorted(k for k in vars(obj) if not k.startswith("_")):  # not caches
            h.update(f"{key}=".encode())
            _feed(h, vars(obj)[key], depth + 1)
    else:  # a function, a class, or an object too deep to walk: its name
        name = getattr(obj, "__qualname__", type(obj).__qualname__)
        h.update(f"{getattr(obj, '__module__', '')}.{name}|".encode())


def _named(obj) -> bool:
    """Whether ``obj`` is a function or class, fingerprinted by name, not walked."""
    return inspect.isroutine(obj) or isinstance(obj, type)
