"""Feature maps φ that turn a metric into Euclidean geometry: d(x, y) = ‖φ(x) − φ(y)‖^p.

Every distance the classifier uses is computed by exact kNN on φ-embeddings, so a
metric is one network pass per image instead of one per pair. ``l2`` is the identity
(p = 1: plain Euclidean distance on pixels). LPIPS (p = 2: a weighted sum of squared
differences of unit-normalised features) registers here too.

A feature space is described whole by its entry in ``FEATURE_MAPS`` (a
:class:`FeatureSpace`: name, φ, p, help, whether the absolute rule has published
defaults in its units, how to check its weights without loading them); the CLI's
``--metric`` choices, the sweep config's ``measure.metric`` and the rules read it there.
A classify resolves its metric once (:func:`get_feature_map`: one backbone) and embeds
each set once (:meth:`FeatureMap.embed_set` → :class:`Embedded`), which the neighbour
search, the null run and the quality metrics all take.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from memgen.errors import UserError
from memgen.neighbours import Flatten, as_tensor

Embedding = Callable[[torch.Tensor], torch.Tensor]  # φ: (n, ...) samples -> (n, D)


@dataclass(frozen=True)
class FeatureMap:
    """A named embedding, built: ``embed`` maps (n, ...) samples to (n, D) vectors.

    power: the metric is ‖φ(x) − φ(y)‖ ** power (1 for l2, 2 for LPIPS).
    """

    name: str
    embed: Embedding
    power: int = 1

    def embed_set(self, samples) -> Embedded:
        """φ of a whole set, once: (n, ...) array or tensor -> :class:`Embedded` (n, D).

        An array becomes a tensor without a copy (contiguous ones); the l2 map's φ is a
        reshape, so its embedding is a view of the samples."""
        return Embedded(vectors=self.embed(as_tensor(samples)), space=self)


@dataclass(frozen=True)
class Embedded:
    """A set embedded once: vectors (n, D) = φ(x) on the samples' device, and the map φ.

    Distances between embedded sets are ‖Δφ‖ (the kNN's units); ``space.power`` turns them
    into the metric's."""

    vectors: torch.Tensor  # (n, D)
    space: FeatureMap

    def __len__(self) -> int:
        return len(self.vectors)

    def rows(self, idx: np.ndarray) -> Embedded:
        """The embedding of the rows ``idx`` (int array) of the set, without embedding again."""
        return Embedded(self.vectors[torch.from_numpy(idx).to(self.vectors.device)], self.space)


def _check_nothing() -> None:
    """A feature space without weight files: always available."""


@dataclass(frozen=True)
class FeatureSpace:
    """A registry entry: everything about a feature space, without building it.

    embedding: builds φ (LPIPS: loads its backbone; called once per classify).
    power: p of d = ‖φ(x) − φ(y)‖^p.
    help: what the CLI's --metric help says of it.
    absolute_defaults: the absolute rule's default thresholds (``rules.ABSOLUTE.defaults``)
        are published in this metric's units.
    check: raises UserError naming the missing weight files, without loading them.
    Calling the entry builds its :class:`FeatureMap` (the registry's contract: an entry is
    a zero-argument factory of FeatureMap; a bare factory is accepted too, with no help,
    no absolute defaults and nothing to check).
    """

    name: str
    embedding: Callable[[], Embedding]
    power: int = 1
    help: str = ""
    absolute_defaults: bool = False
    check: Callable[[], None] = _check_nothing

    def __call__(self) -> FeatureMap:
        return FeatureMap(name=self.name, embed=self.embedding(), power=self.power)


def _lpips(net: str, convention: str, help: str, absolute_defaults: bool = False) -> FeatureSpace:
    def embedding() -> Embedding:
        # LPIPS builds its backbone only when the metric is asked for
        from memgen.metrics.lpips import embed_batched, load_lpips

        model = load_lpips(net, convention=convention)
        return lambda x: embed_batched(model, x)

    def check() -> None:
        # LPIPS: looks for its weight files only when the metric is asked for
        from memgen.metrics.lpips import find_weights

        find_weights(net)

    name = f"lpips-{net}" + ("-ref" if convention == "reference" else "")
    return FeatureSpace(name=name, embedding=embedding, power=2, help=help,
                        absolute_defaults=absolute_defaults, check=check)


FEATURE_MAPS: dict[str, Callable[[], FeatureMap]] = {
    "l2": FeatureSpace("l2", embedding=lambda: Flatten.embed, power=1,
                       help="Euclidean on pixels"),
    # LPIPS v0.1 (memgen.metrics.lpips); -ref: the paper's public code's [0, 1] inputs
    "lpips-alex": _lpips("alex", "lpips", "LPIPS, AlexNet backbone"),
    "lpips-vgg": _lpips("vgg", "lpips", "LPIPS, VGG16 backbone"),
    # the reference code's README publishes absolute thresholds for this one only
    "lpips-alex-ref": _lpips("alex", "reference", "LPIPS-AlexNet on the public reference "
                             "code's [0,1] inputs", absolute_defaults=True),
    "lpips-vgg-ref": _lpips("vgg", "reference", "LPIPS-VGG16 on [0,1] inputs"),
}


def registry_entry(registry: dict, name: str, noun: str):
    """The entry of ``registry`` under ``name``; UserError naming the known ones
    ("unknown rule 'x'; known rules: paper, absolute")."""
    if name not in registry:
        raise UserError(f"unknown {noun} {name!r}; known {noun}s: {', '.join(registry)}")
    return registry[name]


def registry_help(registry: dict) -> str:
    """A --help line of a registry's entries: "name: its help; ...". """
    return "; ".join(f"{entry.name}: {entry.help}" for entry in registry.values()) + "."


class RegistryNames(Sequence):
    """The names of a registry, read at each use: a name registered later is included;
    after the names ``first`` (None for a config's optional choice).

    Compares equal to the tuple of the names (what a choice list used to be)."""

    def __init__(self, registry: dict, *first):
        self.registry, self.first = registry, first

    def __getitem__(self, i):
        return (*self.first, *self.registry)[i]

    def __len__(self) -> int:
        return len(self.first) + len(self.registry)

    def __contains__(self, name) -> bool:
        return name in self.first or name in self.registry

    def __eq__(self, other) -> bool:
        return tuple(self) == (tuple(other) if isinstance(other, (tuple, RegistryNames))
                               else other)

    __hash__ = None  # mutable: its names follow the registry's

    def __repr__(self) -> str:
        return repr(tuple(self))


METRIC_NAMES = RegistryNames(FEATURE_MAPS)  # the --metric and measure.metric choices


def _entry(name: str) -> Callable[[], FeatureMap]:
    try:
        return FEATURE_MAPS[name]
    except KeyError:
        known = ", ".join(sorted(FEATURE_MAPS))
        raise UserError(f"unknown metric {name!r}; known metrics: {known}") from None


def get_feature_map(name: str) -> FeatureMap:
    """The feature map registered under ``name``, built (LPIPS: loads its backbone);
    UserError lists the known ones."""
    return _entry(name)()


def check_available(name: str) -> None:
    """UserError if ``name`` is unknown or its weight files are missing — without building
    it (the sweep's check before any work)."""
    getattr(_entry(name), "check", _check_nothing)()


def absolute_default_metrics() -> tuple[str, ...]:
    """The metrics whose units the absolute rule's default thresholds are published in."""
    return tuple(name for name, entry in FEATURE_MAPS.items()
                 if getattr(entry, "absolute_defaults", False))


def metric_help() -> str:
    """The --metric help: each registered metric with its entry's help."""
    return "; ".join(f"{name}: {entry.help}" if getattr(entry, "help", "") else name
                     for name, entry in FEATURE_MAPS.items())


def embed_sets(metric: str | None, *sets) -> tuple[tuple[Embedded | None, ...], FeatureMap]:
    """Every set in one feature space, and its map: an :class:`Embedded` set as it is, an
    array or tensor embedded here, None kept.

    metric: the registry name; None takes the embedded sets' space, or l2 when none is
    embedded. The map is built only when some set still needs embedding. UserError when
    embedded sets come from different spaces or another ``metric`` is asked for.
    """
    spaces = [x.space for x in sets if isinstance(x, Embedded)]
    space = spaces[0] if spaces else None
    if any(s is not space for s in spaces) or (
            space is not None and metric is not None and metric != space.name):
        names = {s.name for s in spaces} | ({metric} if metric else set())
        raise UserError(f"the sets are embedded in different feature spaces "
                        f"({', '.join(sorted(names))})")
    if space is None:
        space = get_feature_map("l2" if metric is None else metric)
    return tuple(x if x is None or isinstance(x, Embedded) else space.embed_set(x)
                 for x in sets), space

