"""The paper authors' DDPM U-Net (their ``src/models/ddpm.py``), rebuilt: ``ReferenceUNet``
and its configuration ``ReferenceConfig``, the keys of their YAML's ``model:`` section.

Their network is Ho et al.'s diffusion_tf U-Net, with attention after every up-path block
as in diffusion_tf, not as in the score_sde port. ``ReferenceUNet`` is memgen's own module
with the same parameter names and the same arithmetic, so the state dicts of their
checkpoints load as they are (reading them: ``memgen.diffusion.reference``).

How it differs from ``memgen.diffusion.nets.unet.UNet`` (the same DDPM layout otherwise:
time MLP, ResBlocks with a 1×1 shortcut, the skip stack, nearest upsampling + conv):

    their network                                  memgen's UNet
    GroupNorm(32 groups, eps=1e-6)                 eps=1e-5, min(32, C) groups
    downsample: pad (0,1,0,1), 3×3 conv stride 2   3×3 conv stride 2, padding 1 (shifted)
    attention at sides exactly in attn_resolutions  at r/2 < side ≤ r
    q, k, v, out: four 1×1 "NIN" maps W (in, out)  one qkv conv + proj conv
    options resamp_with_conv, nonlinearity         SiLU, conv resampling only

so memgen's UNet cannot hold their weights; the numbers agree with theirs to float32
rounding (tests/test_reference.py, against outputs of their own code).

Schedule. They train and sample with diffusers' ``DDPMScheduler`` at its defaults:
T = 1000, β linear from 1e-4 to 0.02, ε-prediction (``train.prediction_type``), t the
0-based integer index, x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε: exactly ``VPSchedule()`` (they build
β and ᾱ in float32, so their σ_t differ from VPSchedule's float64 ones by up to 8e-5
relative, at t = 0). The YAML's ``train.timesteps`` is their number of *sampling* steps
(``set_timesteps``), not T.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from memgen.diffusion.schedules import VPSchedule
from memgen.errors import UserError

GROUPS, GN_EPS = 32, 1e-6  # their GroupNorm, hard-coded in src/models/layers.py
ACTIVATIONS = {"swish": nn.SiLU, "relu": nn.ReLU, "elu": nn.ELU,
               "lrelu": partial(nn.LeakyReLU, 0.2)}
ALIASES = {"ch": "dim", "ch_mult": "dim_mults", "channels": "in_channels"}  # score_sde names
TRAIN_KEYS = ("prediction_type", "beta_schedule")  # their train: keys that decide the denoiser


# ---------------------------------------------------------------------------------------
# configuration: their YAML's model: (and train:) keys
# ---------------------------------------------------------------------------------------

def _int_tuple(name: str, value) -> tuple[int, ...]:
    """Their "1,2,2" / 16 / [1, 2, 2] (train_utils.str2tuple) -> (1, 2, 2)."""
    if isinstance(value, str):
        value = [v for v in value.replace(" ", "").split(",") if v]
    elif isinstance(value, int):
        value = [value]
    try:
        return tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise UserError(f"reference config: {name} must be integers like 1,2,2, got {value!r}") \
            from None


@dataclass(frozen=True)
class ReferenceConfig:
    """Their ``ModelOptions`` (parse_utils.py), with its defaults, plus the two ``train:``
    keys that decide the denoiser: ``prediction_type`` and ``beta_schedule``."""

    image_size: int = 32
    in_channels: int = 3
    dim: int = 128
    dim_mults: tuple[int, ...] = (1, 2, 2, 2)
    attn_resolutions: tuple[int, ...] = (16,)
    num_res_blocks: int = 2
    dropout: float = 0.0
    conditional: bool = True
    resamp_with_conv: bool = True
    nonlinearity: str = "swish"
    scale_by_sigma: bool = False
    prediction_type: str = "epsilon"
    beta_schedule: str = "linear"

    def __post_init__(self):
        for name in ("dim_mults", "attn_resolutions"):  # "1,2,2", 16, [1, 2, 2] -> tuples
            object.__setattr__(self, name, _int_tuple(name, getattr(self, name)))
        for name in ("image_size", "in_channels", "dim", "num_res_blocks"):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                raise UserError(f"reference config: {name} must be an integer, "
                                f"got {getattr(self, name)!r}")
        levels = len(self.dim_mults)
        if levels == 0 or min(self.dim_mults) < 1 or self.num_res_blocks < 0:
            raise UserError(f"reference config: need dim_mults >= 1 and num_res_blocks >= 0, got "
                            f"{self.dim_mults} and {self.num_res_blocks}")
        if self.dim < GROUPS or self.dim % GROUPS or self.in_channels < 1:
            raise UserError(f"reference config: dim must be a multiple of {GROUPS} (their "
                            f"GroupNorm has {GROUPS} groups), got {self.dim}")
        if self.image_size < 1 or self.image_size % 2 ** (levels - 1):
            raise UserError(f"reference config: image_size {self.image_size} must be divisible "
                            f"by 2^{levels - 1} for {levels} levels (their skips must match)")
        if str(self.nonlinearity).lower() not in ACTIVATIONS:
            raise UserError(f"reference config: nonlinearity {self.nonlinearity!r} is not one "
                            f"of {', '.join(ACTIVATIONS)}")
        if not self.conditional or self.scale_by_sigma:
            raise UserError("reference config: their DDPM cannot run with conditional=False or "
                            "scale_by_sigma=True (it fails in its own constructor / forward)")

    @property
    def sides(self) -> tuple[int, ...]:
        """Feature-map side per level: image_size // 2**i."""
        return tuple(self.image_size // 2 ** i for i in range(len(self.dim_mults)))

    @property
    def shape(self) -> tuple[int, int, int]:
        """One sample: (C, H, W)."""
        return (self.in_channels, self.image_size, self.image_size)

    def schedule(self) -> VPSchedule:
        """Their diffusion: diffusers' DDPMScheduler defaults (see the module docstring)."""
        if self.beta_schedule != "linear":
            raise UserError(f"reference config: beta_schedule {self.beta_schedule!r}; their "
                            "train_unet.py offers only 'linear'")
        return VPSchedule(beta_min=1e-4, beta_max=0.02, T=1000)

    def architecture(self) -> dict:
        """The fields that change the network's function (not dropout, not train keys)."""
        skip = {"dropout", "prediction_type", "beta_schedule"}
        return {k: v for k, v in asdict(self).items() if k not in skip}

    @classmethod
    def from_mapping(cls, mapping: Mapping) -> ReferenceConfig:
        """Their YAML as a dict (``model:`` and ``train:`` sections) or its ``model:`` keys;
        score_sde names (ch, ch_mult) are accepted. Unknown keys raise UserError."""
        if isinstance(mapping.get("model"), Mapping):
            train = mapping.get("train") or {}
            model = dict(mapping["model"])
            model.update({k: train[k] for k in ("prediction_type", "beta_schedule") if k in train})
        else:
            model = dict(mapping)
        values = {ALIASES.get(k, k): v for k, v in model.items()}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"reference config: unknown key(s) {', '.join(unknown)}; known: "
                            f"{', '.join(sorted(known))}")
        return cls(**values)


# ---------------------------------------------------------------------------------------
# the network: their parameter names, memgen's code
# ---------------------------------------------------------------------------------------

def group_norm(channels: int) -> nn.GroupNorm:
    if channels % GROUPS:
        raise UserError(f"reference network: {channels} channels are not divisible by "
                        f"{GROUPS} GroupNorm groups")
    return nn.GroupNorm(GROUPS, channels, eps=GN_EPS)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """DDPM's sinusoidal embedding, float32 in their order of operations: (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device)
                      * -(math.log(10000) / (half - 1)))  # (half,)
    angle = t.float()[:, None] * freqs[None, :]  # (B, half)
    return torch.cat([angle.sin(), angle.cos()], dim=1)  # (B, dim)


class NIN(nn.Module):
    """A 1×1 map over channels, y = xᵀ W + b with W (in, out) (their "network in network")."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.W = nn.Parameter(torch.zeros(in_ch, out_ch))
        self.b = nn.Parameter(torch.zeros(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bchw,co->bohw", x, self.W) + self.b[:, None, None]  # (B, out, H, W)


class ResnetBlock(nn.Module):
    """GN → act → conv3 → +Dense(act(temb)) → GN → act → dropout → conv3, + NIN shortcut."""

    def __init__(self, act: nn.Module, in_ch: int, out_ch: int, temb_dim: int, dropout: float):
        super().__init__()
        self.act = act
        self.GroupNorm_0 = group_norm(in_ch)
        self.Conv_0 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.Dense_0 = nn.Linear(temb_dim, out_ch)
        self.GroupNorm_1 = group_norm(out_ch)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        if in_ch != out_ch:
            self.NIN_0 = NIN(in_ch, out_ch)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.Conv_0(self.act(self.GroupNorm_0(x)))  # (B, out, H, W)
        h = h + self.Dense_0(self.act(temb))[:, :, None, None]
        h = self.Conv_1(self.Dropout_0(self.act(self.GroupNorm_1(h))))
        return (self.NIN_0(x) if hasattr(self, "NIN_0") else x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H·W positions: x + NIN_3(v softmax(qᵀk/√C)ᵀ)."""

    def __init__(self, ch: int):
        super().__init__()
        self.GroupNorm_0 = group_norm(ch)
        self.NIN_0, self.NIN_1, self.NIN_2, self.NIN_3 = (NIN(ch, ch) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.GroupNorm_0(x)
        q, k, v = (nin(h).reshape(B, C, H * W) for nin in (self.NIN_0, self.NIN_1, self.NIN_2))
        w = torch.softmax(torch.bmm(q.transpose(1, 2), k) * C ** -0.5, dim=-1)  # (B, HW, HW)
        h = torch.bmm(v, w.transpose(1, 2)).reshape(B, C, H, W)  # (B, C, H, W)
        return x + self.NIN_3(h)


class Resample(nn.Module):
    """×2 nearest upsampling or ÷2 downsampling, with a 3×3 conv (``Conv_0``) when asked:
    down pads (0, 1, 0, 1) and strides 2 (TensorFlow's "SAME"), else 2×2 average pooling."""

    def __init__(self, ch: int, with_conv: bool, down: bool):
        super().__init__()
        self.down = down
        if with_conv:
            self.Conv_0 = nn.Conv2d(ch, ch, 3, stride=2 if down else 1, padding=0 if down else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = getattr(self, "Conv_0", None)
        if self.down:
            return conv(F.pad(x, (0, 1, 0, 1))) if conv else F.avg_pool2d(x, 2, 2)
        h = F.interpolate(x, size=(2 * x.shape[-2], 2 * x.shape[-1]), mode="nearest")
        return conv(h) if conv else h


class ReferenceUNet(nn.Module):
    """Their DDPM U-Net: x (B, C, S, S), t (B,) or a scalar (integers 0..999; floats are
    embedded as they are) -> ε̂ (B, C, S, S). One flat ``all_modules`` list in their order,
    walked by ``plan``: "push" saves h on the skip stack, "res_skip" concatenates one."""

    def __init__(self, config: ReferenceConfig):
        super().__init__()
        self.config = c = config
        self.act = ACTIVATIONS[c.nonlinearity.lower()]()
        nf, temb = c.dim, 4 * c.dim
        layers, plan = [], []

        def add(op, module=None):
            plan.append(op)
            if module is not None:
                layers.append(module)

        def res(in_ch, out_ch):
            return ResnetBlock(self.act, in_ch, out_ch, temb, c.dropout)

        add("temb_in", nn.Linear(nf, temb))
        add("temb_out", nn.Linear(temb, temb))
        add("conv_in", nn.Conv2d(c.in_channels, nf, 3, padding=1))
        add("push")
        skips, ch = [nf], nf
        for level, mult in enumerate(c.dim_mults):
            for _ in range(c.num_res_blocks):
                add("res", res(ch, nf * mult))
                ch = nf * mult
                if c.sides[level] in c.attn_resolutions:
                    add("attn", AttnBlock(ch))
                add("push")
                skips.append(ch)
            if level < len(c.dim_mults) - 1:
                add("resample", Resample(ch, c.resamp_with_conv, down=True))
                add("push")
                skips.append(ch)
        add("res", res(ch, ch))
        add("attn", AttnBlock(ch))
        add("res", res(ch, ch))
        for level in reversed(range(len(c.dim_mults))):
            for _ in range(c.num_res_blocks + 1):
                add("res_skip", res(ch + skips.pop(), nf * c.dim_mults[level]))
                ch = nf * c.dim_mults[level]
                if c.sides[level] in c.attn_resolutions:
                    add("attn", AttnBlock(ch))
            if level > 0:
                add("resample", Resample(ch, c.resamp_with_conv, down=False))
        assert not skips, "every skip is consumed"
        add("norm_out", group_norm(ch))
        add("conv_out", nn.Conv2d(ch, c.in_channels, 3, padding=1))
        self.all_modules = nn.ModuleList(layers)
        self.plan = tuple(plan)

    def forward(self, x: torch.Tensor, t: torch.Tensor | int | float) -> torch.Tensor:
        if x.ndim != 4 or tuple(x.shape[1:]) != self.config.shape:
            want = ", ".join(map(str, self.config.shape))
            raise UserError(f"x must have shape (B, {want}), got {tuple(x.shape)}")
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        if t.shape != (x.shape[0],):
            raise UserError(f"t must be a scalar or of shape ({x.shape[0]},), got {tuple(t.shape)}")
        layers, hs = iter(self.all_modules), []
        emb = timestep_embedding(t, self.config.dim).to(x.dtype)  # (B, dim)
        h = x
        for op in self.plan:
            if op == "push":
                hs.append(h)
                continue
            layer = next(layers)
            if op == "temb_in":
                emb = layer(emb)  # (B, 4·dim)
            elif op == "temb_out":
                emb = layer(self.act(emb))
            elif op == "res":
                h = layer(h, emb)
            elif op == "res_skip":
                h = layer(torch.cat([h, hs.pop()], dim=1), emb)
            elif op == "norm_out":
                h = self.act(layer(h))
            else:  # conv_in, attn, resample, conv_out
                h = layer(h)
        return h  # (B, C, S, S)


__all__ = ["ReferenceConfig", "ReferenceUNet"]
