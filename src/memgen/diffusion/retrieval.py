"""Fixed-point retrieval: x ← D(x, σ) at one noise level until x stops moving.

With the exact denoiser this is the retrieval dynamics of the empirical energy E_σ
(``memgen.memory.energy``): the end of a ladder cut at stop_sigma
(``memgen.diffusion.ladders.truncate_ladder``) carried into its attractor.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def retrieve_fixed_point(denoiser, x, sigma: float, *, tol: float = 1e-6, max_iter: int = 500):
    """x ← D(x, σ) until no coordinate moves more than ``tol`` (or ``max_iter`` rounds).

    For the exact denoiser this is the fixed-point (CCCP) retrieval on the empirical energy
    E_σ, which never raises it: every sample ends in the attractor whose basin it is in —
    a stored pattern, or a mixture minimum where E_σ has them (spurious states).
    """
    for _ in range(max_iter):
        x_next = denoiser(x, sigma)
        done = (x_next - x).abs().max() <= tol
        x = x_next
        if done:
            break
    return x
