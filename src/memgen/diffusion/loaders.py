"""Every denoiser memgen runs, built from its source in one place (``load_denoiser``).

The sources (a ``memgen train`` checkpoint, the exact denoiser of a training set, a
TorchScript ε-model, a diffusers folder, the authors' checkpoint) and how each builds its
denoiser and schedule are the registry of ``memgen.diffusion.sources``; what identifies a
loaded model (``ModelSource``, content hashes) is ``memgen.diffusion.identity``.
"""

from __future__ import annotations

import torch

from memgen.diffusion.schedules import VESchedule, VPSchedule
from memgen.diffusion.sources import SOURCES, LoadedModel, LoadOptions
from memgen.errors import UserError


def load_denoiser(*, schedule: VPSchedule | VESchedule | str | None = None,
                  shape: tuple[int, ...] | None = None, device: str | torch.device = "cpu",
                  exact_dtype: torch.dtype = torch.float32, clip: bool = False,
                  ema: bool = True, **sources) -> LoadedModel:
    """The denoiser of exactly one source, on ``device``: ``sources`` holds one keyword of
    ``SOURCES`` (its name: the registered sources below, or one registered beside them).

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
    unknown = sorted(set(sources) - set(SOURCES))
    if unknown:
        raise TypeError(f"load_denoiser() got an unexpected keyword argument {unknown[0]!r}")
    given = [name for name in SOURCES if sources.get(name) is not None]
    if len(given) != 1:
        raise UserError(f"give exactly one model source ({', '.join(SOURCES)}), got "
                        f"{', '.join(given) or 'none'}")
    options = LoadOptions(schedule=schedule, shape=shape, device=device,
                          exact_dtype=exact_dtype, clip=clip, ema=ema)
    return SOURCES[given[0]].load(sources[given[0]], options)
