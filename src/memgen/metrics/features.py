"""Feature maps φ that turn a metric into Euclidean geometry: d(x, y) = ‖φ(x) − φ(y)‖^p.

Every distance the classifier uses is computed by exact kNN on φ-embeddings, so a
metric is one network pass per image instead of one per pair. ``l2`` is the identity
(p = 1: plain Euclidean distance on pixels). LPIPS (p = 2: a weighted sum of squared
differences of unit-normalised features) registers here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from memgen.errors import UserError


@dataclass(frozen=True)
class FeatureMap:
    """A named embedding: ``embed`` maps (n, ...) samples to (n, D) vectors.

    power: the metric is ‖φ(x) − φ(y)‖ ** power (1 for l2, 2 for LPIPS).
    """

    name: str
    embed: Callable[[torch.Tensor], torch.Tensor]
    power: int = 1


def _flatten(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


def _lpips(net: str, convention: str) -> Callable[[], FeatureMap]:
    def make() -> FeatureMap:
        # LPIPS builds its backbone only when the metric is asked for
        from memgen.metrics.lpips import embed_batched, load_lpips

        model = load_lpips(net, convention=convention)
        name = f"lpips-{net}" + ("-ref" if convention == "reference" else "")
        return FeatureMap(name=name, embed=lambda x: embed_batched(model, x), power=2)
    return make


FEATURE_MAPS: dict[str, Callable[[], FeatureMap]] = {
    "l2": lambda: FeatureMap(name="l2", embed=_flatten, power=1),
    # LPIPS v0.1 (memgen.metrics.lpips); -ref: the paper's public code's [0, 1] inputs
    "lpips-alex": _lpips("alex", "lpips"),
    "lpips-vgg": _lpips("vgg", "lpips"),
    "lpips-alex-ref": _lpips("alex", "reference"),
    "lpips-vgg-ref": _lpips("vgg", "reference"),
}


def get_feature_map(name: str) -> FeatureMap:
    """The feature map registered under ``name``; ValueError lists the known ones."""
    try:
        return FEATURE_MAPS[name]()
    except KeyError:
        known = ", ".join(sorted(FEATURE_MAPS))
        raise UserError(f"unknown metric {name!r}; known metrics: {known}") from None
