"""The DDPM U-Net of Ho, Jain & Abbeel 2020 ("Denoising Diffusion Probabilistic Models",
App. B), in the layout of the original TensorFlow code (diffusion_tf/models/unet.py).

    x (B, C, H, W) ─conv_in─> h0 ─┬─ down: per level `num_res_blocks` × [ResBlock (+ attn)],
                                  │        then a stride-2 conv (all levels but the last);
                                  │        every output is pushed on the skip stack
                                  ├─ middle: ResBlock, attn, ResBlock
                                  └─ up:   per level (`num_res_blocks` + 1) × [concat skip,
                                           ResBlock (+ attn)], then nearest upsample + conv
    ──GroupNorm─SiLU─conv_out (zero-initialised)──> (B, C, H, W)

The timestep t (B,) enters through a sinusoidal embedding of size `dim` followed by
Linear(dim, 4·dim) → SiLU → Linear(4·dim, 4·dim); each ResBlock adds a projection of it.

Attention placement. DDPM puts single-head self-attention at the 16×16 feature maps
(`attn_resolutions=(16,)`, the paper's reference configs in ``presets``). Here a level of side s
gets attention when r/2 < s ≤ r for some r in `attn_resolutions`, so 16 means the
16×16 level for 32 or 64 px inputs and the 14×14 level for 28 px inputs
(28 → 14 → 7), the nearest the MNIST-sized network has. The middle block always
has attention, as in DDPM. (The paper's reference code matches sides exactly, so its
28 px networks have attention only in the middle block, 24.5M parameters at dim 128
as in the paper's Table 2; `attn_resolutions=()` builds that network.)

Odd sizes. Downsampling is a 3×3 stride-2 conv with padding 1 (side s → ⌈s/2⌉, so
28 → 14 → 7); upsampling interpolates (nearest) to the exact side of the skip it is
about to be concatenated with, then applies a 3×3 conv, so every size round-trips.

Initialisation is PyTorch's default (from the global RNG, like any nn.Module; seed
the caller's RNG for a reproducible init) except the output conv, which starts at
zero as in DDPM, so a fresh network outputs exactly 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from memgen.errors import UserError


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with min(groups, channels) groups; they must divide `channels`."""
    g = min(groups, channels)
    if channels % g:
        raise UserError(f"GroupNorm: {channels} channels are not divisible by {g} groups")
    return nn.GroupNorm(g, channels)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding (Vaswani et al. 2017; DDPM's get_timestep_embedding):
    (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device) / (half - 1))
    angle = t.float()[:, None] * freqs[None, :]  # (B, dim/2)
    return torch.cat([angle.sin(), angle.cos()], dim=-1)  # (B, dim)


class ResBlock(nn.Module):
    """GN → SiLU → conv3 → +proj(emb) → GN → SiLU → dropout → conv3, plus a (1×1) shortcut."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = group_norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out_ch)
        self.norm2 = group_norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, out, H, W)
        h = h + self.emb_proj(F.silu(emb))[:, :, None, None]  # (B, out, H, W)
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))  # (B, out, H, W)
        return self.shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H·W positions: x + proj(softmax(qkᵀ/√C) v)."""

    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.norm = group_norm(ch, groups)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).transpose(-1, -2)  # (B, 3, HW, C)
        q, k, v = qkv.unbind(dim=1)  # each (B, HW, C)
        h = F.scaled_dot_product_attention(q, k, v)  # (B, HW, C)
        h = h.transpose(-1, -2).reshape(B, C, H, W)  # (B, C, H, W)
        return x + self.proj(h)


class ResAttn(nn.Module):
    """A ResBlock followed by an AttnBlock when `attn`; one entry of the down/up paths."""

    def __init__(self, in_ch, out_ch, emb_dim, dropout, groups, attn: bool):
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, emb_dim, dropout, groups)
        self.attn = AttnBlock(out_ch, groups) if attn else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.attn(self.res(x, emb))


class Downsample(nn.Module):
    """3×3 conv, stride 2, padding 1: (B, C, H, W) -> (B, C, ⌈H/2⌉, ⌈W/2⌉)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour resize to `size` (the next skip's side), then a 3×3 conv."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


def _check_config(channels, dim, dim_mults, num_res_blocks, dropout, image_size) -> None:
    if channels < 1 or image_size < 1:
        raise UserError(f"channels and image_size must be >= 1, got {channels} and {image_size}")
    if dim < 2 or dim % 2:
        raise UserError(f"dim must be even and >= 2, got {dim}")
    if len(dim_mults) == 0 or min(dim_mults) < 1:
        raise UserError(f"dim_mults must be a non-empty tuple of ints >= 1, got {dim_mults}")
    if num_res_blocks < 1:
        raise UserError(f"num_res_blocks must be >= 1, got {num_res_blocks}")
    if not 0.0 <= dropout < 1.0:
        raise UserError(f"dropout must be in [0, 1), got {dropout}")


def _has_attention(side: int, attn_resolutions: tuple[int, ...]) -> bool:
    """True when r/2 < side ≤ r for some r: 16 selects the 16×16 level, or 14×14 at 28 px."""
    return any(r / 2 < side <= r for r in attn_resolutions)


class UNet(nn.Module):
    """DDPM U-Net (Ho et al. 2020): x (B, C, H, W), t (B,) or a scalar -> (B, C, H, W).

    channels: image channels C; dim: base width (channels of level 0); dim_mults:
    width multiplier per level (one level per entry, a stride-2 downsample between
    levels); num_res_blocks: ResBlocks per level on the way down (one more on the way
    up); attn_resolutions: feature-map sides r with attention at the level of side s,
    r/2 < s ≤ r (see the module docstring); image_size: the side H = W of the inputs;
    groups: GroupNorm groups, min(groups, channels) of them, which must divide every
    channel count (else ValueError).
    """

    def __init__(
        self,
        channels: int = 1,
        dim: int = 128,
        dim_mults: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: tuple[int, ...] = (16,),
        dropout: float = 0.1,
        image_size: int = 28,
        groups: int = 32,
    ):
        super().__init__()
        _check_config(channels, dim, dim_mults, num_res_blocks, dropout, image_size)
        self.channels, self.dim, self.image_size = channels, dim, image_size
        self.sides = [image_size]  # feature-map side per level: 28 -> 14 -> 7
        for _ in dim_mults[1:]:
            self.sides.append((self.sides[-1] + 1) // 2)
        self.attn_sides = [s for s in self.sides if _has_attention(s, tuple(attn_resolutions))]
        emb_dim = 4 * dim
        self.time_mlp = nn.Sequential(  # (B, dim) -> (B, 4·dim)
            nn.Linear(dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.conv_in = nn.Conv2d(channels, dim, 3, padding=1)
        block = dict(emb_dim=emb_dim, dropout=dropout, groups=groups)
        skips = self._build_down(dim_mults, num_res_blocks, block)
        ch = skips[-1]
        self.mid1 = ResBlock(ch, ch, **block)
        self.mid_attn = AttnBlock(ch, groups)
        self.mid2 = ResBlock(ch, ch, **block)
        ch = self._build_up(dim_mults, num_res_blocks, block, skips)
        self.norm_out = group_norm(ch, groups)
        self.conv_out = nn.Conv2d(ch, channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # DDPM: the network starts by predicting 0
        nn.init.zeros_(self.conv_out.bias)

    def _build_down(self, dim_mults, num_res_blocks, block) -> list[int]:
        """Fill self.down; return the channel count of every skip, in push order."""
        self.down = nn.ModuleList()
        ch = self.dim
        skips = [ch]  # conv_in's output is the first skip
        for i, mult in enumerate(dim_mults):
            attn = self.sides[i] in self.attn_sides
            for _ in range(num_res_blocks):
                self.down.append(ResAttn(ch, self.dim * mult, attn=attn, **block))
                ch = self.dim * mult
                skips.append(ch)
            if i < len(dim_mults) - 1:
                self.down.append(Downsample(ch))
                skips.append(ch)
        return skips

    def _build_up(self, dim_mults, num_res_blocks, block, skips: list[int]) -> int:
        """Fill self.up, consuming `skips` from the end; return the output channel count."""
        self.up = nn.ModuleList()
        ch = skips[-1]
        for i in reversed(range(len(dim_mults))):
            attn = self.sides[i] in self.attn_sides
            for _ in range(num_res_blocks + 1):
                out = self.dim * dim_mults[i]
                self.up.append(ResAttn(ch + skips.pop(), out, attn=attn, **block))
                ch = out
            if i > 0:
                self.up.append(Upsample(ch))
        assert not skips, "every skip must be consumed"
        return ch

    def _check_input(self, x: torch.Tensor, t) -> torch.Tensor:
        """Validate x; return t as a (B,) tensor on x's device."""
        shape = (self.channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != shape:
            want = ", ".join(map(str, shape))
            raise UserError(f"x must have shape (B, {want}), got {tuple(x.shape)}")
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise UserError(f"t must be a scalar or of shape ({x.shape[0]},), got {tuple(t.shape)}")
        return t

    def forward(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        t = self._check_input(x, t)
        emb = self.time_mlp(timestep_embedding(t, self.dim).to(x.dtype))  # (B, 4·dim)
        hs = [self.conv_in(x)]  # skip stack; (B, dim, H, W) first
        for layer in self.down:
            hs.append(layer(hs[-1]) if isinstance(layer, Downsample) else layer(hs[-1], emb))
        h = self.mid2(self.mid_attn(self.mid1(hs[-1], emb)), emb)  # (B, dim·mults[-1], s, s)
        for layer in self.up:
            if isinstance(layer, Upsample):
                h = layer(h, size=hs[-1].shape[-2:])  # back to the next skip's side
            else:
                h = layer(torch.cat([h, hs.pop()], dim=1), emb)  # (B, dim·mult, s, s)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, C, H, W)
