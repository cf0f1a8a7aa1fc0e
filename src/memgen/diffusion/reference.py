"""The paper authors' released checkpoints: their ``K.pt`` files, read into memgen's rebuild
of their DDPM U-Net (``memgen.diffusion.nets.reference_unet``), and their YAML configs.

The paper's public code (Lemon-cmd/Diffusion-Models-and-Associative-Memory, MIT) trains one
network per training-set size K with its ``train_unet.py``, which saves ``{iterations}.pt``;
their Hugging Face release (``src/hf_checkpoints.py``) names the files ``K.pt``. Each is a dict
``{"model", "ema", "opt", "args", "iterations"}``: the raw and EMA state dicts of its
``src/models/ddpm.py`` network (``ReferenceUNet``, same parameter names), the Adam state, and
the parsed command line.

Loading never unpickles arbitrary objects: ``torch.load(weights_only=True)``. Their ``args``
is an ``argparse.Namespace`` of their own dataclasses (``parse_utils.ModelOptions``, …) and a
``pathlib.PosixPath``, which weights_only refuses; every such class is allowlisted under its
name as ``_Inert``, a plain attribute holder that runs no code, so ``args`` reads as data
(``args.model`` gives the architecture when no config is given).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn as nn
import yaml

from memgen.diffusion.nets.reference_unet import TRAIN_KEYS, ReferenceConfig, ReferenceUNet
from memgen.errors import UserError


def reference_config(config) -> ReferenceConfig:
    """A ReferenceConfig from their YAML's path, a mapping (see ``from_mapping``) or itself."""
    if isinstance(config, ReferenceConfig):
        return config
    if isinstance(config, Mapping):
        return ReferenceConfig.from_mapping(config)
    if isinstance(config, (str, Path)):
        path = Path(config)
        if not path.is_file():
            raise UserError(f"no such reference config file: {path}")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise UserError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
        if not isinstance(loaded, Mapping):
            raise UserError(f"{path}: expected their YAML with a model: section")
        return ReferenceConfig.from_mapping(loaded)
    raise UserError("reference config must be a YAML path or a mapping, got "
                    f"{type(config).__name__}")


# ---------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------

class _Inert:
    """What a class of theirs in ``args`` (Namespace, dataclasses, PosixPath) is read as:
    its pickled attributes (``__dict__``) or constructor arguments (``args``), no code."""

    def __new__(cls, *args, **kwargs):
        return super().__new__(cls)

    def __init__(self, *args, **kwargs):
        self.args = args


@dataclass(frozen=True)
class ReferenceModel:
    """A loaded checkpoint: the network (eval mode, float32, CPU) and its configuration."""

    net: ReferenceUNet
    config: ReferenceConfig


def _check_torch() -> None:
    """UserError unless torch has what reading their ``args`` needs (2.6: ``safe_globals``
    with ``(obj, "name")`` entries, ``get_unsafe_globals_in_checkpoint``)."""
    version = tuple(int(p) for p in re.findall(r"[0-9]+", torch.__version__)[:2])
    serialization = torch.serialization
    if (version < (2, 6) or not hasattr(serialization, "safe_globals")
            or not hasattr(serialization, "get_unsafe_globals_in_checkpoint")):
        raise UserError(f"reading the authors' checkpoints needs torch >= 2.6 (weights_only "
                        f"loading of their args), this is torch {torch.__version__}")


def _reason(err: Exception) -> str:
    """The line of torch's error that says what failed ("WeightsUnpickler error: …",
    "Trying to …"), else its last line that is no docs link; never the advice to load with
    weights_only=False."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    lines = [line for line in lines
             if "http" not in line and not ("weights_only" in line and "False" in line)]
    named = [line for line in lines if line.startswith(("WeightsUnpickler error:", "Trying to"))]
    return (named or lines or [type(err).__name__])[-1]


def read_reference_checkpoint(path: str | Path) -> dict:
    """Their ``K.pt`` as a dict, by ``torch.load(weights_only=True)`` on the CPU; the
    classes of ``args`` come back as inert attribute holders (module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such reference checkpoint: {path}")
    _check_torch()
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        with torch.serialization.safe_globals([(_Inert, name) for name in unsafe]):
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt pickle can raise anything (TypeError for a bad BUILD)
        raise UserError(f"{path} is not a readable torch checkpoint: {_reason(err)}") from None
    if not isinstance(payload, dict):
        raise UserError(f"{path}: expected their checkpoint dict (model, ema, opt, args, "
                        f"iterations), got {type(payload).__name__}")
    return payload


def _state_dict(payload: dict, key: str, path: Path) -> dict[str, torch.Tensor]:
    """payload[key] without DDP's ``module.`` prefix, its tensors in float32."""
    if key not in payload:
        other = "; pass ema=False for the raw 'model' weights" if key == "ema" else ""
        raise UserError(f"{path} has no {key!r} weights (it has: "
                        f"{', '.join(map(str, payload)) or 'nothing'}){other}")
    state = payload[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor)
                                                 for v in state.values()):
        raise UserError(f"{path}: {key!r} is not a state dict of tensors")
    while state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def _check_fit(net: nn.Module, state: dict, config: ReferenceConfig, key: str, path) -> None:
    """UserError naming the keys of ``state`` that do not fit ``net`` (missing, unexpected,
    wrong shape), at most five of each."""
    want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in state.items()}
    problems = []
    for label, names in (("missing", [k for k in want if k not in have]),
                         ("unexpected", [k for k in have if k not in want]),
                         ("wrong shape", [f"{k} {have[k]} != {want[k]}" for k in want
                                          if k in have and have[k] != want[k]])):
        if names:
            more = f" (+{len(names) - 5} more)" if len(names) > 5 else ""
            problems.append(f"{label} {', '.join(names[:5])}{more}")
    if problems:
        arch = ", ".join(f"{k}={v}" for k, v in config.architecture().items())
        raise UserError(f"{path}: the {key!r} weights do not fit the config ({arch}): "
                        + "; ".join(problems))


def _config_from_args(payload: dict) -> ReferenceConfig | None:
    """Their ``args.model`` (and ``args.train``), when the checkpoint carries them."""
    args = payload.get("args")
    model = getattr(args, "model", None)
    if model is None or not hasattr(model, "__dict__"):
        return None
    known = {f.name for f in fields(ReferenceConfig)}
    values = {k: v for k, v in vars(model).items() if k in known}
    train = getattr(args, "train", None)
    for key in TRAIN_KEYS:
        if hasattr(train, key):
            values[key] = getattr(train, key)
    return ReferenceConfig.from_mapping(values)


def _stated_train_keys(config) -> set[str]:
    """Which of TRAIN_KEYS a config states: its mapping's keys (or its ``train:`` section's),
    its YAML's, or, for a ReferenceConfig, those that differ from the defaults."""
    if isinstance(config, ReferenceConfig):
        return {k for k in TRAIN_KEYS if getattr(config, k) != getattr(ReferenceConfig(), k)}
    mapping = config
    if isinstance(config, (str, Path)):
        mapping = yaml.safe_load(Path(config).read_text())  # read by reference_config already
    if isinstance(mapping.get("model"), Mapping):
        mapping = mapping.get("train") or {}
    return {k for k in TRAIN_KEYS if k in mapping}


def _with_own_train_keys(config, own: ReferenceConfig | None, payload: dict,
                         path: Path) -> ReferenceConfig:
    """``config`` as a ReferenceConfig, checked against the checkpoint's own ``args`` (when
    it has them): the architecture must agree, and prediction_type and beta_schedule come
    from ``args.train``; a config that states other values raises UserError."""
    given = reference_config(config)
    if own is None:
        return given
    train = getattr(payload.get("args"), "train", None)
    own_keys = [k for k in TRAIN_KEYS if hasattr(train, k)]
    stated = _stated_train_keys(config)
    diff = [f"{k} {v!r} (checkpoint: {own.architecture()[k]!r})"
            for k, v in given.architecture().items() if own.architecture()[k] != v]
    diff += [f"{k} {getattr(given, k)!r} (checkpoint: {getattr(own, k)!r})" for k in own_keys
             if k in stated and getattr(given, k) != getattr(own, k)]
    if diff:
        raise UserError(f"{path}: the config disagrees with the checkpoint's own args on "
                        f"{', '.join(diff)}; give no config to use the checkpoint's")
    return replace(given, **{k: getattr(own, k) for k in own_keys})


def load_reference(path: str | Path, config=None, *, ema: bool = True) -> ReferenceModel:
    """Their ``K.pt`` as a ReferenceModel: the EMA weights (``ema=False``: the raw ``model``
    ones), DDP's ``module.`` prefix removed. ``config``: their YAML's path, a mapping of
    its ``model:`` keys, a ReferenceConfig, or None for the checkpoint's own ``args``.
    A config that disagrees with the checkpoint's ``args`` raises UserError."""
    path = Path(path)
    payload = read_reference_checkpoint(path)
    own = _config_from_args(payload)
    if config is None and own is None:
        raise UserError(f"{path} carries no args; give their YAML config")
    config = own if config is None else _with_own_train_keys(config, own, payload, path)
    key = "ema" if ema else "model"
    state = _state_dict(payload, key, path)
    with torch.device("meta"):  # shapes only: the weights come from the checkpoint
        net = ReferenceUNet(config)
    _check_fit(net, state, config, key, path)
    net.load_state_dict(state, strict=True, assign=True)
    return ReferenceModel(net.eval(), config)


def load_reference_checkpoint(path: str | Path, config=None, *, ema: bool = True) -> nn.Module:
    """Their network with the weights of ``path`` (see ``load_reference``): a module whose
    ``forward(x, t)``, t integer timesteps in [0, 999], is their ``forward(x, t)``."""
    return load_reference(path, config, ema=ema).net


__all__ = ["ReferenceConfig", "ReferenceModel", "ReferenceUNet", "load_reference",
           "load_reference_checkpoint", "read_reference_checkpoint", "reference_config"]
