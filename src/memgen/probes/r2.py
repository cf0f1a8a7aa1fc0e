"""r² of one denoiser against another, by noise level: which theory a network follows.

At each VE noise level σ, the held-out images y_i (N of them) are noised once, x_i = y_i +
σ n_i (n_i ~ N(0, I) from a seeded ``torch.Generator``, one draw of the whole set per σ in
the order given), and both denoisers see the same (x_i, σ). With a_i = D_a(x_i, σ) (the
model) and b_i = D_b(x_i, σ) (the reference: an analytic denoiser), flattened to vectors,

    r²(σ) = 1 − Σ_i ‖a_i − b_i‖² / Σ_i ‖b_i − b̄‖²,   b̄ = (1/N) Σ_i b_i (the per-coordinate
                                                       mean of the reference's outputs),

the fraction of the reference's variance over the inputs that the model reproduces (1:
identical; 0: no better than the reference's mean). Kamb & Ganguli (2024) report per-image
r² medians ≈ 0.94–0.96, so also

    r²_i = 1 − ‖a_i − b_i‖² / ‖b_i − mean(b_i)‖²,   mean(b_i): the mean of b_i's coordinates,

and their median over i. Sums in float64. Where the reference's outputs do not vary (a
single training image, identical ones: the denominator is 0) r² is undefined: 1 if a = b,
else NaN.

Known answer (tests): a = c·b gives r² = 1 − (1 − c)² Σ‖b_i‖² / Σ‖b_i − b̄‖².
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class R2Row:
    """r² of a model against a reference at one σ over n held-out images."""

    sigma: float
    r2: float  # pooled over images (module docstring)
    median_r2: float  # median of the per-image r²
    n: int


def r2_scores(model_out: torch.Tensor, reference_out: torch.Tensor) -> tuple[float, float]:
    """(pooled r², median per-image r²) of outputs (N, D) against a reference's (N, D)."""
    a, b = model_out.to(torch.float64), reference_out.to(torch.float64)
    err = (a - b).square().sum(1)  # (N,)
    pooled = _r2(err.sum(), (b - b.mean(0)).square().sum())
    per_image = _r2(err, (b - b.mean(1, keepdim=True)).square().sum(1))
    return float(pooled), float(per_image.median())


def _r2(err: torch.Tensor, spread: torch.Tensor) -> torch.Tensor:
    """1 − err / spread; where the reference does not vary (spread 0) r² is undefined: 1
    if the model matches it exactly, else NaN (not −∞)."""
    undefined = torch.where(err == 0, 1.0, torch.nan).to(err.dtype)
    return torch.where(spread > 0, 1 - err / spread, undefined)


def denoiser_outputs(denoiser: Callable, x: torch.Tensor, sigma: float,
                     batch_size: int) -> torch.Tensor:
    """D(x, σ) in blocks of ``batch_size`` rows, flattened to (N, D) float64."""
    with torch.inference_mode():
        out = [denoiser(x[i:i + batch_size], sigma) for i in range(0, len(x), batch_size)]
    return torch.cat(out).reshape(len(x), -1).to(torch.float64)


def denoiser_r2(model: Callable, reference: Callable, heldout: torch.Tensor,
                sigmas: Sequence[float], generator: torch.Generator,
                batch_size: int = 256) -> list[R2Row]:
    """r²(σ) of ``model`` against ``reference`` (``Denoiser``s) on ``heldout`` (N, ...)
    noised at each σ of ``sigmas`` (module docstring)."""
    return [row for _, row in compare(model, {"reference": reference}, heldout, sigmas,
                                      generator, batch_size)]


def compare(model: Callable, references: dict[str, Callable], heldout: torch.Tensor,
            sigmas: Sequence[float], generator: torch.Generator,
            batch_size: int = 256) -> list[tuple[str, R2Row]]:
    """(reference name, row) per σ and reference: each reference sees the same noisy
    inputs as the model at that σ (one draw per σ)."""
    rows = []
    for sigma in sigmas:
        noise = torch.randn(heldout.shape, generator=generator, dtype=heldout.dtype)
        x = heldout + sigma * noise
        ours = denoiser_outputs(model, x, sigma, batch_size)
        for name, reference in references.items():
            pooled, median = r2_scores(ours, denoiser_outputs(reference, x, sigma, batch_size))
            rows.append((name, R2Row(float(sigma), pooled, median, len(x))))
    return rows
