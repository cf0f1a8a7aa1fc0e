"""Every denoiser memgen runs, built from its source in one place (``load_denoiser``).

The sources (a ``memgen train`` checkpoint, the exact denoiser of a training set, a
TorchScript ε-model, a diffusers folder, the authors' checkpoint) and how each builds its
denoiser and schedule are the registry of ``memgen.diffusion.sources``; what identifies a
loaded model (``ModelSource``, content hashes) is ``memgen.diffusion.identity``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from memgen.diffusion.schedules import VESchedule, VPSchedule
from memgen.diffusion.sources import SOURCES, LoadedModel, LoadOptions
from memgen.errors import UserError


def load_denoiser(*, checkpoint: str | Path | None = None,
                  exact: np.ndarray | torch.Tensor | None = None,
                  torchscript: str | Path | None = None, diffusers: str | Path | None = None,
                  reference: tuple | None = None,
                  schedule: VPSchedule | VESchedule | str | None = None,
                  shape: tuple[int, ...] | None = None, device: str | torch.device = "cpu",
                  exact_dtype: torch.dtype = torch.float32, clip: bool = False,
                  ema: bool = True, **others) -> LoadedModel:
    """The denoiser of exactly one source, on ``device`` (``others``: a source registered
    beside these, by its name).

    checkpoint: a checkpoint file (its EMA weights, or the raw ones without ``ema``); it
        carries its schedule and sample shape.
    exact: the training set (N, ...); its exact denoiser in ``exact_dtype`` (see
        ``memgen.diffusion.sources``), with ``schedule`` ("vp", "ve", a schedule, or None
        for none) only for the samplers' ladder.
    torchscript, diffusers: an ε-model file or folder; ``schedule`` its VP schedule
        [VPSchedule()], ``shape`` its sample shape (required: the model does not record it).
    reference: (path, config) of the authors' ``K.pt`` (``ema`` as for checkpoint), config
        their YAML's path, a mapping of its model: keys, or None for the checkpoint's args;
        it carries its schedule and sample shape.
    clip: clamp an ε-model's x̂₀ to [−1, 1] (``EpsDenoiser``); no effect on the others.
    """
    values = {"checkpoint": checkpoint, "exact": exact, "torchscript": torchscript,
              "diffusers": diffusers, "reference": reference, **others}
    unknown = sorted(set(values) - set(SOURCES))
    if unknown:
        raise TypeError(f"load_denoiser() got an unexpected keyword argument {unknown[0]!r}")
    given = [name for name in SOURCES if values.get(name) is not None]
    if len(given) != 1:
        raise UserError(f"give exactly one model source ({', '.join(SOURCES)}), got "
                        f"{', '.join(given) or 'none'}")
    options = LoadOptions(schedule=schedule, shape=shape, device=device,
                          exact_dtype=exact_dtype, clip=clip, ema=ema)
    return SOURCES[given[0]].load(values[given[0]], options)
