"""Reading model files: ``memgen train`` checkpoints, TorchScript archives and diffusers
folders, and the shape check of an ε-model (``memgen.diffusion.sources`` builds the
denoisers from them)."""

from __future__ import annotations

from pathlib import Path

import torch

from memgen.diffusion.nets import NetConfig
from memgen.diffusion.parameterization import network_time
from memgen.diffusion.schedules import VPSchedule
from memgen.diffusion.training import TrainConfig, load_checkpoint
from memgen.errors import UserError

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


def sample_shape(net: NetConfig) -> tuple[int, ...]:
    """One sample of a network: (dim,) for an MLP, (channels, size, size) for a U-Net."""
    return (net.dim,) if net.kind == "mlp" else (net.channels, net.image_size, net.image_size)


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


def torchscript_net(path, device):
    """A TorchScript archive: code and tensors, no pickled Python objects."""
    if not Path(path).is_file():
        raise UserError(f"no such TorchScript file: {path}")
    try:
        return torch.jit.load(str(path), map_location=device).eval()
    except RuntimeError as err:  # not a TorchScript archive (torch says so in its first line)
        raise UserError(f"cannot read TorchScript file {path} "
                        f"({str(err).splitlines()[0]})") from None


def diffusers_net(path, device):
    """A diffusers UNet2DModel folder as eps = net(x_t, t)."""
    try:
        from diffusers import UNet2DModel  # optional: the diffusers extra
    except ImportError:
        raise UserError("loading a diffusers model needs "
                        "`pip install diffusers`") from None

    unet = UNet2DModel.from_pretrained(str(path), local_files_only=True).to(device).eval()
    return lambda x, t: unet(x, t).sample
