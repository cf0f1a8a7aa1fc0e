"""Network configurations: the paper's reference U-Nets (its Table 2), small CPU U-Nets,
and the 2D-toy MLP.

Parameter counts (``count_parameters(get_preset(name).build())``) against the paper's
Table 2 (Pham et al. 2025, arXiv 2505.21777):

    preset         params        paper   note
    mnist/fmnist   24,515,585    24.5M   no attention outside the middle block (see below)
    cifar10        35,746,307    35.7M   exactly the DDPM CIFAR-10 model (Ho et al. 2020)
    church         61,745,283    61.7M   the paper's width 96 (dim 128 would give 109,733,379)
    fmnist-cpu-16     701,345       -     dim 32, (1, 2), attn 8×8: fwd+bwd of 32 ≈ 0.25 s*
    fmnist-cpu-28   1,112,801       -     dim 32, (1, 2, 2), attn 14×14: ≈ 0.8 s*
    digits-8          701,345       -     fmnist-cpu-16's layout at 8×8 (attn 4×4): 32 ms per
                                          step of 16*
    digits-8-w8        44,969       -     digits-8 at width 8 (the capacity axis)
    digits-8-w64    2,793,281       -     digits-8 at width 64 (the capacity axis)
    toy-mlp            54,274       -
    (* one thread of the 2-core development machine)

MNIST: the reference code places attention where the feature-map side equals an entry
of attn_resolutions exactly, so (16,) at 28 px (sides 28, 14, 7) means no attention
outside the middle block: that network has 24,515,585 parameters, the paper's 24.5M, and
the presets use ``attn_resolutions=()``. memgen's U-Net would otherwise attend at the
nearest level, 14×14 (25,833,985 parameters; see ``memgen.diffusion.nets.unet``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from memgen.diffusion.nets.mlp import ScoreMLP
from memgen.diffusion.nets.unet import UNet
from memgen.errors import UserError


@dataclass(frozen=True)
class NetConfig:
    """One network. kind "unet" reads channels..dropout; kind "mlp" reads dim, width, depth, seed.

    For the MLP, `dim` is the data dimension and `seed` seeds its local generator
    (Fourier frequencies and weights). The U-Net draws its init from the global RNG.
    """

    kind: str
    channels: int = 1
    image_size: int = 28
    dim: int = 128
    dim_mults: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    width: int = 128
    depth: int = 4
    seed: int = 0

    def build(self) -> nn.Module:
        """The module this config describes."""
        if self.kind not in _BUILDERS:
            known = ", ".join(sorted(_BUILDERS))
            raise UserError(f"unknown net kind {self.kind!r}; known: {known}")
        return _BUILDERS[self.kind](self)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample the network takes: (C, H, W) for a U-Net, (D,) else."""
        if self.kind == "unet":
            return (self.channels, self.image_size, self.image_size)
        return (self.dim,)

    @property
    def takes(self) -> str:
        """The samples it takes, in words: "1×8×8 images", "2-dimensional vectors"."""
        if self.kind == "unet":
            return "×".join(map(str, self.sample_shape)) + " images"
        return f"{self.dim}-dimensional vectors"

    def to_dict(self) -> dict:
        """Plain dict (tuples as lists) for JSON next to artifacts and in checkpoints."""
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "NetConfig":
        """Inverse of ``to_dict``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise UserError(f"unknown NetConfig fields: {', '.join(sorted(unknown))}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _build_unet(c: NetConfig) -> nn.Module:
    return UNet(channels=c.channels, dim=c.dim, dim_mults=c.dim_mults,
                num_res_blocks=c.num_res_blocks, attn_resolutions=c.attn_resolutions,
                dropout=c.dropout, image_size=c.image_size)


def _build_mlp(c: NetConfig) -> nn.Module:
    return ScoreMLP(dim=c.dim, width=c.width, depth=c.depth, seed=c.seed)


_BUILDERS: dict[str, Callable[[NetConfig], nn.Module]] = {"unet": _build_unet, "mlp": _build_mlp}

# The reference code attends where the side is exactly 16, which a 28-px net never has:
# without attention the network has the paper's 24.5M parameters (24,515,585).
_MNIST = NetConfig("unet", channels=1, image_size=28, dim=128, dim_mults=(1, 2, 2),
                   num_res_blocks=2, attn_resolutions=(), dropout=0.1)

PRESETS: dict[str, NetConfig] = {
    # the paper's reference networks (DDPM U-Net, width 128, attention at 16×16)
    "mnist": _MNIST,
    "fmnist": _MNIST,
    "cifar10": NetConfig("unet", channels=3, image_size=32, dim=128, dim_mults=(1, 2, 2, 2),
                         num_res_blocks=2, attn_resolutions=(16,), dropout=0.1),
    # The paper's Table 2: initial width 96, 61.7M parameters (61,745,283 here); width 128
    # would give 109.7M.
    "church": NetConfig("unet", channels=3, image_size=64, dim=96, dim_mults=(1, 1, 2, 2, 4, 4),
                        num_res_blocks=2, attn_resolutions=(16,), dropout=0.0),
    # small U-Nets that train on 2 CPU cores (sides 16 -> 8; 28 -> 14 -> 7)
    "fmnist-cpu-16": NetConfig("unet", channels=1, image_size=16, dim=32, dim_mults=(1, 2),
                               num_res_blocks=1, attn_resolutions=(8,), dropout=0.0),
    "fmnist-cpu-28": NetConfig("unet", channels=1, image_size=28, dim=32, dim_mults=(1, 2, 2),
                               num_res_blocks=1, attn_resolutions=(14,), dropout=0.0),
    # scikit-learn's 8×8 digits (sides 8 -> 4): the layout of fmnist-cpu-16
    "digits-8": NetConfig("unet", channels=1, image_size=8, dim=32, dim_mults=(1, 2),
                          num_res_blocks=1, attn_resolutions=(4,), dropout=0.0),
    # the capacity axis (issue #25): digits-8's layout at widths 8 and 64 (the authors'
    # released checkpoints vary width the same way); widths 12–24 would put 48 channels
    # under GroupNorm's 32 groups
    "digits-8-w8": NetConfig("unet", channels=1, image_size=8, dim=8, dim_mults=(1, 2),
                             num_res_blocks=1, attn_resolutions=(4,), dropout=0.0),
    "digits-8-w64": NetConfig("unet", channels=1, image_size=8, dim=64, dim_mults=(1, 2),
                              num_res_blocks=1, attn_resolutions=(4,), dropout=0.0),
    # the 2D toy's score network (Fourier time embedding, 4 SiLU layers of 128)
    "toy-mlp": NetConfig("mlp", dim=2, width=128, depth=4),
}


def get_preset(name: str) -> NetConfig:
    """The NetConfig called `name` (a key of PRESETS)."""
    if name not in PRESETS:
        raise UserError(f"unknown net preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameter entries; buffers are not counted."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def preset_parameters(name: str) -> int:
    """The parameter count of a preset's network, built on the meta device (no memory,
    no initialisation: a fraction of a second even for the paper's networks)."""
    with torch.device("meta"):
        return count_parameters(get_preset(name).build())
