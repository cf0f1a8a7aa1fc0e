"""A small time-conditioned MLP for low-dimensional data (the 2D toy).

Time enters through a Gaussian Fourier embedding (Tancik et al. 2020, used for
score networks by Song et al. 2021, "Score-Based Generative Modeling through SDEs",
App. C): fixed frequencies W ~ N(0, s²), embed(t) = [sin(2π t W), cos(2π t W)].

The network returns a generic output of the shape of x; the training code decides
whether it is read as a score, a noise ε or a denoised x₀.

Every random number (frequencies and weights) comes from a local
``torch.Generator`` seeded with ``seed``: building a ScoreMLP never touches the
global torch RNG, and the same seed always gives the same network.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from memgen.errors import UserError


def _seeded_linear(fan_in: int, fan_out: int, generator: torch.Generator) -> nn.Linear:
    """nn.Linear with PyTorch's default init, U(±1/√fan_in), drawn from `generator`."""
    layer = nn.utils.skip_init(nn.Linear, fan_in, fan_out)  # no draw from the global RNG
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=generator)
        layer.bias.uniform_(-bound, bound, generator=generator)
    return layer


class GaussianFourierEmbedding(nn.Module):
    """t (B,) -> [sin(2π t W), cos(2π t W)] (B, 2F), W ~ N(0, scale²) fixed (a buffer)."""

    def __init__(self, features: int, scale: float, generator: torch.Generator):
        super().__init__()
        self.register_buffer("W", torch.randn(features, generator=generator) * scale)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angle = 2 * math.pi * t[:, None] * self.W[None, :]  # (B, F)
        return torch.cat([angle.sin(), angle.cos()], dim=-1)  # (B, 2F)


class ScoreMLP(nn.Module):
    """MLP on concat(x, embed(t)): `depth` Linear+SiLU layers of `width`, then Linear to `dim`.

    x: (B, dim), t: (B,) or a scalar, in [0, 1] -> (B, dim).
    """

    def __init__(
        self,
        dim: int = 2,
        width: int = 128,
        depth: int = 4,
        fourier_features: int = 16,
        fourier_scale: float = 16.0,
        seed: int = 0,
    ):
        super().__init__()
        for name, value in [("dim", dim), ("width", width), ("depth", depth),
                            ("fourier_features", fourier_features)]:
            if value < 1:
                raise UserError(f"{name} must be >= 1, got {value}")
        if fourier_scale <= 0:
            raise UserError(f"fourier_scale must be > 0, got {fourier_scale}")
        self.dim = dim
        g = torch.Generator().manual_seed(seed)
        self.embed = GaussianFourierEmbedding(fourier_features, fourier_scale, g)
        sizes = [dim + 2 * fourier_features] + [width] * depth
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            layers += [_seeded_linear(fan_in, fan_out, g), nn.SiLU()]
        layers.append(_seeded_linear(width, dim, g))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise UserError(f"x must have shape (B, {self.dim}), got {tuple(x.shape)}")
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise UserError(f"t must be a scalar or of shape ({x.shape[0]},), got {tuple(t.shape)}")
        h = torch.cat([x, self.embed(t)], dim=-1)  # (B, dim + 2F)
        return self.net(h)  # (B, dim)
