"""Input checks shared by the probes: batches of points, noise levels, chunk sizes."""

from __future__ import annotations

import math

import torch

from memgen.errors import UserError

F64 = torch.float64


def check_points(x, name: str = "x") -> torch.Tensor:
    """x itself if it is a finite (B, ...) tensor, B ≥ 1, numel ≥ 1 each; else UserError."""
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or len(x) == 0 or x[0].numel() == 0:
        raise UserError(f"{name} must be a non-empty (B, ...) tensor with at least one "
                         "coordinate per sample")
    if not torch.isfinite(x).all():
        raise UserError(f"{name} must be finite (no NaN or inf)")
    return x


def check_sigma(sigma) -> float:
    """sigma as a float if it is finite and positive; else UserError."""
    sigma = float(sigma)
    if not (math.isfinite(sigma) and sigma > 0):
        raise UserError(f"sigma must be a finite positive number, got {sigma}")
    return sigma


def check_chunk(chunk) -> None:
    """UserError unless chunk (rows per denoiser call) is None or a positive integer."""
    if chunk is not None and (int(chunk) != chunk or chunk < 1):
        raise UserError(f"chunk must be None or a positive integer, got {chunk}")
