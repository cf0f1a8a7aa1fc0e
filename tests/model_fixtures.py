"""Small models with known answers, shared by the tests of the loaders, generate and diagnose."""

from __future__ import annotations

import torch

from memgen.diffusion.schedules import VPSchedule


def scripted_eps(path, y: torch.Tensor):
    """Save a TorchScript ε-model returning the exact ε of one point y (VP, DDPM linear
    schedule): its denoiser is D(x, σ) = y at every σ of the ladder. Returns path."""
    class Eps(torch.nn.Module):
        def __init__(self, y, a_bar):
            super().__init__()
            self.register_buffer("y", y)
            self.register_buffer("a_bar", a_bar)

        def forward(self, x, t):
            a = self.a_bar[t.round().long()].view(-1, 1, 1, 1)
            return (x - a.sqrt() * self.y) / (1 - a).sqrt()

    torch.jit.script(Eps(y, VPSchedule().alphas_cumprod.float())).save(str(path))
    return path
