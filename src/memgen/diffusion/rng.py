"""Random streams: where every sampler's and prior's noise comes from.

A ``generator`` is None (torch's global RNG), a torch.Generator, or a ``StackedGenerator``
(one stream per sample, so a sample never depends on its batch). ``noise_like`` and
``normal`` draw standard normals from any of them; ``noise_stream`` streams the scaled draws
a sampler makes, in order, several steps' at a time where that gives the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from memgen.errors import UserError


class StackedGenerator:
    """One random stream per sample (the idea of NVlabs/edm's ``StackedRandomGenerator``).

    Draws for a batch are the per-sample draws stacked along dim 0, so sample k's noise
    depends only on seeds[k], never on the batch it is drawn in. A seed is a non-negative
    int of any size or a tuple of them, e.g. (set seed, sample index). The streams are
    numpy PCG64 generators keyed by the full seed: torch's CPU generator keeps only the
    low 32 bits of a seed, which would make sample i of set s and sample i of set s + 2³²
    — and, by the birthday bound, about a hundred pairs in a million hashed seeds —
    identical. Draws are made in float64 on the CPU and cast to the requested dtype.

    scale: (len(seeds),) or None; row k's draws are multiplied by scale[k] in the requested
    dtype on the requested device (c·z for a sample carried on its own ladder c·u:
    ``memgen.probes.recovery``). Every draw goes through ``randn``.
    """

    def __init__(self, seeds: Sequence, device: str | torch.device = "cpu", *,
                 scale: torch.Tensor | None = None):
        seeds = list(seeds)
        if not seeds:
            raise UserError("seeds must be non-empty")
        if scale is not None and scale.shape != (len(seeds),):  # a caller's bug
            raise ValueError(f"scale must have shape ({len(seeds)},), got {tuple(scale.shape)}")
        self.device = torch.device(device)
        self.scale = scale
        self.generators = [np.random.Generator(np.random.PCG64(_seed_sequence(s)))
                           for s in seeds]
        self._ahead = np.empty((len(seeds), 0))  # normals drawn ahead: one row per stream

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape, *, dtype=None, device=None) -> torch.Tensor:
        """(len(seeds), ...) standard normal draws, row k from stream k (times scale[k])."""
        shape = tuple(shape)
        if not shape or shape[0] != len(self):  # a caller's bug, not the user's input
            raise ValueError(f"leading dimension {shape[:1]} must equal the number of "
                             f"seeds ({len(self)})")
        size = int(np.prod(shape[1:], dtype=np.int64))
        missing = size - self._ahead.shape[1]
        if missing > 0:
            fresh = np.empty((len(self), max(missing, _DRAW_AHEAD)))
            for g, row in zip(self.generators, fresh):
                g.standard_normal(out=row)
            self._ahead = np.concatenate([self._ahead, fresh], 1) if self._ahead.size else fresh
        draws, self._ahead = self._ahead[:, :size], self._ahead[:, size:]
        # numpy's normals come one after another, so a block drawn ahead holds the same
        # values, in the same order, as the draws it replaces: grouping never matters.
        out = torch.from_numpy(np.ascontiguousarray(draws).reshape(shape))
        out = out.to(dtype=dtype or torch.get_default_dtype())
        out = out.to(device if device is not None else self.device)
        if self.scale is None:
            return out
        return out * self.scale.to(out).view(-1, *([1] * (out.ndim - 1)))

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return self.randn(x.shape, dtype=x.dtype, device=x.device)


# normals drawn per stream at a time, at least: small draws (the toy's noise, 2 a step)
# share a numpy call; the samplers draw several steps' noise at once (``noise_stream``)
_DRAW_AHEAD = 512


def _seed_sequence(seed) -> np.random.SeedSequence:
    entropy = [int(v) for v in seed] if isinstance(seed, (tuple, list)) else int(seed)
    if min(entropy if isinstance(entropy, list) else [entropy]) < 0:
        raise UserError(f"seeds must be non-negative, got {seed}")
    return np.random.SeedSequence(entropy)


def noise_like(x: torch.Tensor, generator) -> torch.Tensor:
    """Standard normal noise shaped like x from None, a torch.Generator or a StackedGenerator."""
    if isinstance(generator, StackedGenerator):
        return generator.randn_like(x)
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    raise UserError("generator must be None, a torch.Generator or a StackedGenerator, "
                     f"got {type(generator).__name__}")


def normal(shape, generator, dtype=None) -> torch.Tensor:
    """Standard normals of ``shape`` from None, a torch.Generator or a StackedGenerator."""
    if isinstance(generator, StackedGenerator):
        return generator.randn(shape, dtype=dtype)
    return noise_like(torch.empty(shape, dtype=dtype), generator)


# ------------------------------------------------------------- a sampler's noise


_NOISE_BLOCK = 2**20  # numbers per block of noise drawn ahead (``noise_stream``)
_ROWS = 64  # per-step views made at a time: none is kept alive for the whole loop


def noise_stream(x: torch.Tensor, generator, scales: list[float]):
    """c_k · z_k for the standard normal draws z_k shaped like x that a sampler makes, in
    order, with c_k = scales[k]: one ``noise_like`` each, or several steps' at a time (one
    draw and one product a block) where the numbers do not depend on how draws are
    grouped (``draws_group``)."""
    if not draws_group(x, generator):
        for c in scales:
            yield noise_like(x, generator) * c
        return
    per = max(1, _NOISE_BLOCK // x.numel())
    for start in range(0, len(scales), per):
        c = _numbers(scales[start:start + per], x).view(-1, *([1] * x.ndim))
        if isinstance(generator, StackedGenerator):
            block = generator.randn((len(x), len(c), *x.shape[1:]), dtype=x.dtype,
                                    device=x.device).transpose(0, 1).contiguous()
        else:
            block = torch.randn((len(c), *x.shape), generator=generator, dtype=x.dtype)
        block.mul_(c)  # (k, B, ...)
        for rows in block.split(_ROWS):
            yield from rows.unbind(0)


def draws_group(x: torch.Tensor, generator) -> bool:
    """Whether one draw of k·n normals gives the numbers of k draws of n = x.numel():
    always for a StackedGenerator (numpy's normals come one after another; a row's scale
    multiplies each of its numbers alike); for torch's CPU generators (a torch.Generator,
    or None with x on the CPU) where x is float32 or float64 and n a multiple of 16, as
    torch's CPU ``normal_`` turns its uniforms into normals 16 at a time (checked in
    tests/test_samplers.py)."""
    if isinstance(generator, StackedGenerator):
        return True
    if not (generator is None or isinstance(generator, torch.Generator)):
        return False  # noise_like refuses it
    device = x.device if generator is None else generator.device
    return (device.type == x.device.type == "cpu" and x.numel() % 16 == 0
            and x.dtype in (torch.float32, torch.float64))


def _numbers(values: list[float], x: torch.Tensor) -> torch.Tensor:
    """Numbers (L,) on x's device for x's arithmetic (a block's product), sent in one
    transfer: in x's dtype (float32 for lower precisions), as an operation on x rounds a
    Python number, so that one of them gives the numbers the Python number gives."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    return torch.tensor(values, dtype=torch.float64).to(x.device, dtype)
