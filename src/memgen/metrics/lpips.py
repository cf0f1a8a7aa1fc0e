"""LPIPS (Zhang et al. 2018, v0.1) as an exact Euclidean embedding.

LPIPS compares two images through a fixed backbone: for layers l = 1..5 with features
f_l (C_l × H_l × W_l), unit-normalised over channels, f̂ = f / (‖f‖_c + 1e-10),

    LPIPS(x, y) = Σ_l 1/(H_l W_l) Σ_{h,w} Σ_c w_lc (f̂_l(x) − f̂_l(y))²_{c,h,w}

with non-negative linear weights w_lc. So LPIPS(x, y) = ‖φ(x) − φ(y)‖² exactly for

    φ(x) = concat_l √(w_lc / (H_l W_l)) · f̂_l(x)_{c,h,w}

— one network pass per image, after which perceptual kNN is ordinary exact Euclidean kNN
(``memgen.neighbours``). ``lpips_pairwise`` computes the same number the way the
``lpips`` package does (both images through the network, per pair); it exists to test
the embedding and for the benchmark.

Backbones: torchvision's AlexNet and VGG16 ``features`` stacks (same layer indices, so
torchvision state dicts load), cut after relu1..relu5 (AlexNet) or relu1_2..relu5_3 (VGG).

Input conventions (memgen images live in [−1, 1]):
- ``lpips`` (default): images go in as [−1, 1], the range the LPIPS heads were calibrated
  on (the package's ``normalize=False``), then the package's shift/scale layer.
- ``reference``: images are first rescaled to [0, 1] and fed as if they were [−1, 1], as the
  paper's public code does; use it to reproduce that code's numbers and thresholds (its
  δ_m = 0.03, δ_s = 0.02 for LPIPS-AlexNet). It compresses the contrast the backbone sees,
  so distances come out smaller than with ``lpips``.
In both, grey images are repeated to 3 channels and images under 32 px are resized to 32
(nearest), as in the reference code: AlexNet's strided first layer and pools need ≥ 32 px.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from memgen.errors import UserError

WEIGHTS_ENV = "MEMGEN_LPIPS_WEIGHTS"
MIN_SIZE = 32
EPS = 1e-10  # lpips.normalize_tensor's
SHIFT = (-0.030, -0.088, -0.188)  # lpips.ScalingLayer
SCALE = (0.458, 0.448, 0.450)
CONVENTIONS = ("lpips", "reference")


@dataclass(frozen=True)
class Backbone:
    """A torchvision ``features`` stack: its layer list and where LPIPS taps it."""

    layers: tuple  # ("C", in, out, kernel, stride, padding) | ("R",) | ("M",)
    taps: tuple[int, ...]  # layer indices after which a feature map is taken
    weights_file: str  # torchvision's file name for the ImageNet weights
    heads_file: str  # the lpips package's v0.1 linear heads


def _vgg16_layers() -> tuple:
    layers, c_in = [], 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"):
        if v == "M":
            layers.append(("M", 2, 2))
        else:
            layers += [("C", c_in, v, 3, 1, 1), ("R",)]
            c_in = v
    return tuple(layers)


BACKBONES = {
    "alex": Backbone(
        layers=(("C", 3, 64, 11, 4, 2), ("R",), ("M", 3, 2), ("C", 64, 192, 5, 1, 2), ("R",),
                ("M", 3, 2), ("C", 192, 384, 3, 1, 1), ("R",), ("C", 384, 256, 3, 1, 1),
                ("R",), ("C", 256, 256, 3, 1, 1), ("R",), ("M", 3, 2)),
        taps=(1, 4, 7, 9, 11), weights_file="alexnet-owt-7be5be79.pth", heads_file="alex.pth"),
    "vgg": Backbone(layers=_vgg16_layers(), taps=(3, 8, 15, 22, 29),
                    weights_file="vgg16-397923af.pth", heads_file="vgg.pth"),
}


def _build_features(backbone: Backbone) -> nn.Sequential:
    modules = []
    for kind, *args in backbone.layers:
        if kind == "C":
            c_in, c_out, k, s, p = args
            modules.append(nn.Conv2d(c_in, c_out, k, stride=s, padding=p))
        elif kind == "R":
            modules.append(nn.ReLU())
        else:
            modules.append(nn.MaxPool2d(args[0], stride=args[1]))
    return nn.Sequential(*modules[:backbone.taps[-1] + 1])  # nothing after the last tap


class Lpips(nn.Module):
    """LPIPS v0.1 with a given backbone; ``embed`` gives φ, ``forward`` the per-layer f̂."""

    def __init__(self, net: str, features: nn.Sequential, heads: list[torch.Tensor],
                 convention: str = "lpips"):
        super().__init__()
        if net not in BACKBONES:
            raise UserError(f"unknown LPIPS backbone {net!r}; known: {', '.join(BACKBONES)}")
        if convention not in CONVENTIONS:
            raise UserError(f"convention must be one of {', '.join(CONVENTIONS)}")
        if any((h < 0).any() for h in heads):
            raise UserError("LPIPS linear weights must be non-negative (the embedding "
                             "needs √w)")
        self.net, self.convention = net, convention
        self.taps = BACKBONES[net].taps
        self.features = features.eval().requires_grad_(False)
        for i, h in enumerate(heads):
            self.register_buffer(f"head{i}", h.reshape(-1).float())
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))

    def heads(self) -> list[torch.Tensor]:
        return [getattr(self, f"head{i}") for i in range(len(self.taps))]

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1|3, H, W) images in [−1, 1] -> the backbone's input (B, 3, ≥32, ≥32)."""
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise UserError(f"LPIPS needs (B, 1 or 3, H, W) images, got {tuple(x.shape)}")
        x = x.to(self.shift.dtype)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if min(x.shape[-2:]) < MIN_SIZE:
            x = F.interpolate(x, size=(max(MIN_SIZE, x.shape[-2]), max(MIN_SIZE, x.shape[-1])),
                              mode="nearest")
        if self.convention == "reference":
            x = (x + 1) / 2
        return (x - self.shift) / self.scale

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Unit-normalised feature maps f̂_l, each (B, C_l, H_l, W_l)."""
        h, out = self.prepare(x), []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.taps:
                out.append(h / (h.square().sum(dim=1, keepdim=True).sqrt() + EPS))
        return out

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """φ(x): (B, Σ_l C_l H_l W_l), with LPIPS(x, y) = ‖φ(x) − φ(y)‖²."""
        parts = []
        for f, w in zip(self(x), self.heads()):
            weight = (w / (f.shape[-2] * f.shape[-1])).sqrt().view(1, -1, 1, 1)
            parts.append((weight * f).flatten(1))
        return torch.cat(parts, dim=1)


def lpips_pairwise(model: Lpips, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """LPIPS of the pairs (x_i, y_i) computed as the ``lpips`` package does: (B,)."""
    if x.shape != y.shape:
        raise UserError(f"pairs need equal shapes, got {tuple(x.shape)} and {tuple(y.shape)}")
    total = 0.0
    for fx, fy, w in zip(model(x), model(y), model.heads()):
        diff = (fx - fy).square()  # (B, C, H, W)
        total = total + F.conv2d(diff, w.view(1, -1, 1, 1)).mean(dim=(1, 2, 3))
    return total


@torch.no_grad()
def embed_batched(model: Lpips, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """φ of many images, ``batch_size`` at a time, on the device of ``x``: (n, D)."""
    model = model.to(x.device)
    return torch.cat([model.embed(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def random_lpips(net: str = "alex", seed: int = 0, convention: str = "lpips",
                 dtype=torch.float32) -> Lpips:
    """LPIPS with random backbone and non-negative random heads (tests and benchmarks)."""
    gen = torch.Generator().manual_seed(seed)
    features = _build_features(BACKBONES[net])
    with torch.no_grad():
        for p in features.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (2 / p[0].numel()) ** 0.5
                    if p.ndim > 1 else torch.randn(p.shape, generator=gen) * 0.1)
    heads = [torch.rand(_channels(features, i), generator=gen) for i in BACKBONES[net].taps]
    return Lpips(net, features, heads, convention).to(dtype)


def _channels(features: nn.Sequential, tap: int) -> int:
    convs = [m for m in list(features)[:tap + 1] if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


def weight_dirs(weights_dir: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for LPIPS weights: the argument, $MEMGEN_LPIPS_WEIGHTS, torch hub's
    checkpoints folder, and the ``lpips`` package's own weights (if it is installed)."""
    if weights_dir is not None:
        return [Path(weights_dir)]
    dirs = [Path(os.environ[WEIGHTS_ENV])] if os.environ.get(WEIGHTS_ENV) else []
    dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    spec = importlib.util.find_spec("lpips")
    if spec is not None and spec.origin:
        dirs.append(Path(spec.origin).parent / "weights" / "v0.1")
    return dirs


def find_weights(net: str = "alex", weights_dir: str | os.PathLike | None = None
                 ) -> dict[str, Path]:
    """The backbone's and the heads' weight files (file name → path), found but not loaded.

    Missing files raise a ValueError that names them and where they are looked for.
    """
    if net not in BACKBONES:
        raise UserError(f"unknown LPIPS backbone {net!r}; known: {', '.join(BACKBONES)}")
    spec, dirs = BACKBONES[net], weight_dirs(weights_dir)
    found = {name: next((d / name for d in dirs if (d / name).is_file()), None)
             for name in (spec.weights_file, spec.heads_file)}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise UserError(
            f"LPIPS-{net} needs {' and '.join(missing)} ({spec.weights_file}: torchvision's "
            f"ImageNet {net} weights; {spec.heads_file}: the lpips package's "
            f"weights/v0.1/{spec.heads_file}); put them in one of: "
            f"{', '.join(map(str, dirs))} (or set {WEIGHTS_ENV})")
    return found


def load_lpips(net: str = "alex", weights_dir: str | os.PathLike | None = None,
               convention: str = "lpips") -> Lpips:
    """LPIPS with ImageNet backbone weights and the v0.1 linear heads, from local files.

    Nothing is downloaded: missing files raise a ValueError that names them and where
    they are looked for.
    """
    found = find_weights(net, weights_dir)  # checks net first
    spec = BACKBONES[net]
    state = torch.load(found[spec.weights_file], map_location="cpu", weights_only=True)
    features = _build_features(spec)
    prefix = "features."
    features.load_state_dict({k[len(prefix):]: v for k, v in state.items()
                              if k.startswith(prefix) and int(k.split(".")[1]) < len(features)})
    heads_state = torch.load(found[spec.heads_file], map_location="cpu", weights_only=True)
    heads = [heads_state[f"lin{i}.model.1.weight"] for i in range(len(spec.taps))]
    return Lpips(net, features, heads, convention)
