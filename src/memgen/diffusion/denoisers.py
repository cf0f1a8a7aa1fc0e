"""Denoisers D(x, σ) ≈ E[y | x = y + σ n]: the one interface samplers and analyses use.

Convention (Karras et al. 2022, k-diffusion): variance-exploding coordinates, x = y + σ n
with n ~ N(0, I). A variance-preserving model x_t = a y + σ_t n (a = √ᾱ, σ_t² = 1 − ᾱ)
is seen through x = x_t / a at σ = σ_t / a; its wrapper does that conversion.

Denoisers are differentiable in x (for Jacobians, divergences and Hessian-vector
products) and build no graph otherwise: network weights are frozen, and the samplers
run under ``torch.no_grad()``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Protocol

import torch

from memgen.diffusion.schedules import VPSchedule
from memgen.diffusion.training import TrainConfig, load_checkpoint
from memgen.errors import UserError
from memgen.memory.energy import kernel_weights

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
            raise UserError("patterns must be a non-empty (N, ...) tensor")
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


class GaussianDenoiser:
    """The exact denoiser of y ~ N(μ, Σ): D(x, σ) = μ + Σ(Σ + σ² I)⁻¹(x − μ) (linear in x).

    The analytic control for samplers and priors: the PF-ODE from N(μ, Σ + σ₀² I) ends in
    N(μ, Σ), each eigendirection (variance λ) scaled by √((λ + σ²)/(λ + σ₀²)) on the way.
    mean: (D,), cov: (D, D); x: (B, D); σ a scalar or (B,).
    """

    def __init__(self, mean: torch.Tensor, cov: torch.Tensor):
        if mean.ndim != 1 or cov.shape != (len(mean), len(mean)):
            raise UserError("need mean (D,) and cov (D, D)")
        self.mean, self.cov = mean, cov

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        mean, cov = self.mean.to(x), self.cov.to(x)
        s2 = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).square().reshape(-1, 1, 1)
        eye = torch.eye(len(mean), dtype=x.dtype, device=x.device)
        gain = cov @ torch.linalg.inv(cov + s2 * eye)  # (1|B, D, D)
        if len(gain) == 1:
            return mean + (x - mean) @ gain[0].T
        return mean + torch.einsum("bij,bj->bi", gain, x - mean)


class EpsDenoiser:
    """A VP ε-prediction network seen as a VE denoiser (k-diffusion's DiscreteEpsDDPMDenoiser).

    At VE level σ: ᾱ = 1/(1 + σ²), x_vp = √ᾱ x, t = schedule.t_from_sigma(σ) (a float;
    exact integers on the schedule's own ladder), ε̂ = net(x_vp, t), and D(x, σ) = x − σ ε̂:
    the model's own field. ``clip`` clamps it to [−1, 1] (Ho et al.'s clip_denoised) for
    analyses that want that field; samplers clip on request instead (``clip=(lo, hi)``,
    ``GenerateConfig.clip_denoised``, on by default for ε-networks there).
    """

    def __init__(self, net, schedule, clip: bool = False):
        self.net, self.schedule, self.clip = net, schedule, clip

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        sigma = _per_sample(sigma, x)
        t = self.schedule.t_from_sigma(sigma.double().cpu()).to(x.device, x.dtype)
        a = (1 + sigma.square()).rsqrt().view(-1, *([1] * (x.ndim - 1)))
        eps = self.net(a * x, t)
        out = x - sigma.view_as(a) * eps
        return out.clamp(-1, 1) if self.clip else out


class ScoreDenoiser:
    """A VE score network with σ(t) = σ_max √t seen as a denoiser: the network output F
    is σ times the score (s = F/σ, see ``memgen.diffusion.training``), so D(x, σ) = x + σ² s = x + σ F."""

    def __init__(self, net, schedule):
        self.net, self.schedule = net, schedule

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        sigma = _per_sample(sigma, x)
        t = self.schedule.t_from_sigma(sigma.double().cpu()).to(x.device, x.dtype)
        return x + sigma.view(-1, *([1] * (x.ndim - 1))) * self.net(x, t)


def _per_sample(sigma, x: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(len(x)).clone()


def load_checkpoint_denoiser(path, *, ema: bool = True, device="cpu", clip: bool = False):
    """The denoiser of a ``memgen train`` checkpoint (EMA weights by default; unclipped
    unless ``clip``, see ``EpsDenoiser``)."""
    payload = load_checkpoint(path, map_location=device)
    config = TrainConfig.from_json(payload["config"])
    net = replace(config.net, seed=config.seed).build().to(device)
    net.load_state_dict(payload["ema" if ema else "model"])
    net.eval().requires_grad_(False)  # gradients flow to x only (Hessians, divergences)
    if config.objective == "vp_eps":
        return EpsDenoiser(net, config.schedule(), clip=clip)
    return ScoreDenoiser(net, config.schedule())


def load_torchscript_denoiser(path, schedule=None, device="cpu", clip: bool = False):
    """A TorchScript ε-model ``eps = model(x_t, t)`` (VP, integer-valued t) as a Denoiser.

    TorchScript archives hold code and tensors, no pickled Python objects.
    """
    if not Path(path).is_file():
        raise UserError(f"no such TorchScript file: {path}")
    net = torch.jit.load(str(path), map_location=device).eval()
    return EpsDenoiser(net, schedule or VPSchedule(), clip=clip)


def load_diffusers_denoiser(path, schedule=None, device="cpu", clip: bool = False):
    """A diffusers ``UNet2DModel`` directory (ε-prediction) as a Denoiser (needs diffusers)."""
    try:
        from diffusers import UNet2DModel  # optional: memgen[diffusers]
    except ImportError:
        raise UserError("loading a diffusers model needs `pip install 'memgen[diffusers]'`") from None

    unet = UNet2DModel.from_pretrained(str(path), local_files_only=True).to(device).eval()
    return EpsDenoiser(lambda x, t: unet(x, t).sample, schedule or VPSchedule(), clip=clip)
