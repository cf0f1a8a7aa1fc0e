"""Starting points for retrieval: where the attractors of E_σ are looked for.

``box`` (uniform in the patterns' bounding box), ``noisy`` (samples of p_σ: a pattern plus
Gaussian noise) and ``annealed`` (the reverse diffusion of the exact denoiser stopped at
σ — which is why the starts live above the diffusion floor, not beside the attractors).
"""

from __future__ import annotations

import torch

from memgen.diffusion.denoisers import EmpiricalDenoiser
from memgen.diffusion.ladders import ve_sigmas
from memgen.diffusion.samplers import sample_euler_maruyama
from memgen.errors import UserError


def box_starts(patterns: torch.Tensor, n: int, generator: torch.Generator | None = None,
               margin: float = 0.25) -> torch.Tensor:
    """n points uniform in the patterns' bounding box, widened by margin × its extent."""
    lo, hi = patterns.min(0).values, patterns.max(0).values
    pad = margin * (hi - lo).clamp_min(1e-3)
    u = torch.rand(n, patterns.shape[1], generator=generator, dtype=patterns.dtype)
    return lo - pad + u.to(patterns.device) * (hi - lo + 2 * pad)


def noisy_starts(patterns: torch.Tensor, n: int, sigma: float,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """n samples of p_σ = (1/N) Σ N(y_i, σ² I): a random pattern plus Gaussian noise."""
    pick = torch.randint(len(patterns), (n,), generator=generator)
    noise = torch.randn(n, patterns.shape[1], generator=generator, dtype=patterns.dtype)
    return patterns[pick.to(patterns.device)] + sigma * noise.to(patterns.device)


def annealed_starts(patterns: torch.Tensor, n: int, sigma: float,
                    generator: torch.Generator | None = None, sigma_max: float | None = None,
                    steps: int = 200) -> torch.Tensor:
    """n endpoints of the reverse diffusion with the exact denoiser, stopped at σ.

    Starts from N(mean, σ_max² I), σ_max defaulting to the patterns' largest distance
    from their mean (the usual "σ_max ≈ data diameter" rule), and follows a geometric
    ladder of ``steps`` levels down to σ with Euler–Maruyama.
    """
    mean = patterns.mean(0)
    if sigma_max is None:
        sigma_max = max(float((patterns - mean).norm(dim=1).max()), 2 * sigma)
    noise = torch.randn(n, patterns.shape[1], generator=generator, dtype=patterns.dtype)
    x = mean + sigma_max * noise.to(patterns.device)
    sigmas = ve_sigmas(sigma_max, sigma, steps)
    return sample_euler_maruyama(EmpiricalDenoiser(patterns), x, sigmas, generator=generator)


STARTS = {"box": box_starts, "noisy": noisy_starts, "annealed": annealed_starts}


def make_starts(kind: str, patterns: torch.Tensor, n: int, sigma: float,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Starts of the named kind: box, noisy (samples of p_σ) or annealed."""
    if kind not in STARTS:
        raise UserError(f"unknown starts {kind!r}; known: {', '.join(STARTS)}")
    if kind == "box":
        return box_starts(patterns, n, generator)
    return STARTS[kind](patterns, n, sigma, generator)
