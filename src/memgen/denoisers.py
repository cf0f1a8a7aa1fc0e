"""Denoisers D(x, σ) ≈ E[y | x = y + σ n]: the one interface samplers and analyses use.

Convention (Karras et al. 2022, k-diffusion): variance-exploding coordinates, x = y + σ n
with n ~ N(0, I). A variance-preserving model x_t = a y + σ_t n (a = √ᾱ, σ_t² = 1 − ᾱ)
is seen through x = x_t / a at σ = σ_t / a; its wrapper does that conversion.
"""

from __future__ import annotations

from typing import Protocol

import torch

from memgen.energy import kernel_weights

DEFAULT_MEMORY_BUDGET = 256 * 2**20  # bytes for one (batch × patterns) block of weights


class Denoiser(Protocol):
    """x: (B, ...) noisy samples, sigma: scalar or (B,) noise levels -> (B, ...) estimates."""

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor: ...


class EmpiricalDenoiser:
    """The exact denoiser of the training set: D(x, σ) = Σ_i softmax_i(−‖x − y_i‖²/(2σ²)) y_i.

    It is the posterior mean under the empirical distribution — the optimal diffusion
    model for that training set, which therefore only reproduces training points (the
    positive control that must memorize). patterns: (N, ...) in the data's own shape.
    """

    def __init__(self, patterns: torch.Tensor, memory_budget: int = DEFAULT_MEMORY_BUDGET):
        if patterns.ndim < 2 or patterns.shape[0] == 0:
            raise ValueError("patterns must be a non-empty (N, ...) tensor")
        self.shape = patterns.shape[1:]
        self.patterns = patterns.reshape(patterns.shape[0], -1)
        self.memory_budget = memory_budget

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1).to(self.patterns.dtype)
        sigma = torch.as_tensor(sigma, dtype=flat.dtype, device=flat.device).expand(len(flat))
        beta = 1.0 / (2.0 * sigma.square())
        step = max(1, self.memory_budget // (flat.element_size() * len(self.patterns)))
        out = torch.cat([kernel_weights(flat[i:i + step], self.patterns, beta[i:i + step])
                         @ self.patterns for i in range(0, len(flat), step)])
        return out.reshape(x.shape).to(x.dtype)
