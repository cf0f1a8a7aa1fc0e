"""Memorized / spurious / generalized: the detection rules of the paper (eqs. 4–6).

Symbols (paper §2.1, for one evaluated sample x̂):
    d1, d2   distances to its first and second nearest training samples (set S)
    s1       distance to its nearest synthetic sample (set S′, x̂ itself excluded)
    ε        1e-6, guards the divisions

Rules:
    paper     memorized  ⇔ d1 / (d2 + ε) ≤ δ_m                       (eq. 4)
              spurious   ⇔ s1 / (d1 + s1 + ε) ≤ δ_s  and not memorized  (eq. 5)
    absolute  memorized  ⇔ d1 ≤ δ_m;  spurious ⇔ s1 ≤ δ_s and not memorized
              (what the public reference code computes, on raw distances)
    generalized ⇔ neither                                            (eq. 6)
Each rule is one :class:`RuleKind` in :data:`RULES` (scores, defaults, range check, captions,
--help); a new rule is a new entry there, read by the CLI, the API, sweeps and reports.

Duplicated training images. A copy of an image that occurs twice in S has d1 ≈ d2, so
eq. 4 never calls it memorized. memgen flags such rows (the second neighbour is a
near-duplicate of the first: closer to it than ``NEAR_DUPLICATE_DELTA`` × the training
set's median nearest-neighbour distance, the hygiene module's definition) and, with
``distinct=True`` (``--dedup``), measures d2 against the nearest training image that is
*not* a near-duplicate of the first — memgen's extension of eq. 4, which equals it on a
training set without near-duplicates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from memgen.errors import UserError
from memgen.metrics.features import RegistryNames, absolute_default_metrics, embed_sets
from memgen.neighbours import DEFAULT_MEMORY_BUDGET, ShardSet, get_knn_backend, stream_knn

MEMORIZED, SPURIOUS, GENERALIZED = 0, 1, 2
LABEL_NAMES = ("memorized", "spurious", "generalized")
DEFAULT_K = 5
NEAR_DUPLICATE_DELTA = 0.1  # × the median nearest-neighbour distance (memgen.metrics.hygiene)
DEDUP_EXTRA = 16  # neighbours searched beyond k, so that duplicates can be skipped
_CUT_SAMPLE = 2000  # training samples whose nearest-neighbour distances give the median
# The ratio tests are scale-free only while ε is negligible: distances must exceed it by
# this factor (data near 1e-30 would otherwise come out all memorized).
MIN_DISTANCE_OVER_EPS = 1e3


@dataclass(frozen=True)
class RuleKind:
    """A detection rule, without thresholds: an entry of :data:`RULES`, read by every user
    (the --rule and measure.rule choices and help, thresholds, labels, captions, null run).

    memorization: (d, ε) ↦ (n,) score, d the (n, k) float64 training distances (ascending);
        memorized ⇔ score ≤ δ_m.
    spurious: (d1, s1, ε) ↦ (n,) score, d1 and s1 (n,) float64; spurious ⇔ score ≤ δ_s and
        not memorized.
    defaults: (δ_m, δ_s) where the user gives none; ``shown``: how --help writes them
        (None: ``:g``).
    check_threshold: (rule name, field, value) ↦ None; UserError for a threshold out of range.
    conditions: the memorized and spurious conditions in words, ``str.format`` patterns of
        δ_m and δ_s (the report's captions).
    needs_second_neighbour: the memorization score reads d2 (k ≥ 2, |S| ≥ 2).
    guarded_ratio: ε guards a ratio, so the distances must dwarf it (check_distance_scale).
    metric_units: the thresholds are distances in the metric's units, with defaults only for
        metrics that publish them (``FeatureSpace.absolute_defaults``).
    """

    name: str
    help: str  # the --rule help line
    defaults: tuple[float, float]
    memorization: Callable[[np.ndarray, float], np.ndarray]
    spurious: Callable[[np.ndarray, np.ndarray, float], np.ndarray]
    check_threshold: Callable[[str, str, float], None]
    conditions: tuple[str, str]
    shown: tuple[str, str] | None = None
    needs_second_neighbour: bool = False
    guarded_ratio: bool = False
    metric_units: bool = False


def _ratio_of_neighbours(d: np.ndarray, eps: float) -> np.ndarray:
    """d1 / (d2 + ε) (eq. 4)."""
    if d.shape[1] < 2:
        raise UserError("the paper rule needs a second nearest training sample, but the "
                         "training set has only one (use --rule absolute)")
    return d[:, 0] / (d[:, 1] + eps)


def _ratio_of_synthetic(d1: np.ndarray, s1: np.ndarray, eps: float) -> np.ndarray:
    """s1 / (d1 + s1 + ε) (eq. 5)."""
    return s1 / (d1 + s1 + eps)


def _nearest_training(d: np.ndarray, eps: float) -> np.ndarray:
    """d1 (the absolute rule; ε unused)."""
    return d[:, 0]


def _nearest_synthetic(d1: np.ndarray, s1: np.ndarray, eps: float) -> np.ndarray:
    """s1 (the absolute rule; ε unused)."""
    return s1


def ratio_threshold(rule: str, field: str, value: float) -> None:
    """A ratio's threshold lies strictly inside (0, 1), where the ratios live."""
    if not 0 < value < 1:
        raise UserError(f"{field} = {value:g}: the {rule} rule's ratios lie in [0, 1], "
                         "so its thresholds must lie strictly between 0 and 1")


def distance_threshold(rule: str, field: str, value: float) -> None:
    """A distance threshold is non-negative."""
    if not value >= 0:
        raise UserError(f"{field} = {value:g}: the {rule} rule's thresholds are "
                         "distances and cannot be negative")


# paper: δ_m = δ_s = 1/3 (Yoon et al. 2023). absolute: the reference code's README example,
# raw distances published only for its own metric (LPIPS-AlexNet on [0, 1] inputs): other
# metrics need explicit ones (the metrics with published defaults:
# FeatureSpace.absolute_defaults).
PAPER = RuleKind(
    "paper", "ratio tests of eqs. 4-6", (1 / 3, 1 / 3), _ratio_of_neighbours,
    _ratio_of_synthetic, ratio_threshold, ("d1/d2 ≤ {:.3g}", "s1/(d1 + s1) ≤ {:.3g}"),
    shown=("1/3", "1/3"), needs_second_neighbour=True, guarded_ratio=True)
ABSOLUTE = RuleKind(
    "absolute", "raw-distance thresholds (the public reference code)", (0.03, 0.02),
    _nearest_training, _nearest_synthetic, distance_threshold,
    ("d1 ≤ {:.3g}", "s1 ≤ {:.3g}"), metric_units=True)
RULES: dict[str, RuleKind] = {kind.name: kind for kind in (PAPER, ABSOLUTE)}
RULE_NAMES = RegistryNames(RULES)  # the --rule and measure.rule choices
DEFAULT_RULE = PAPER.name


def rule_kind(name: str) -> RuleKind:
    """The rule registered under ``name``; UserError lists the known ones."""
    if name not in RULES:
        raise UserError(f"unknown rule {name!r}; known rules: {', '.join(RULES)}")
    return RULES[name]


def rule_help() -> str:
    """The --rule help: each registered rule with its entry's help."""
    return "; ".join(f"{kind.name}: {kind.help}" for kind in RULES.values()) + "."


def threshold_help(field: str) -> str:
    """Each registered rule's default of ``field`` (delta_m or delta_s), for --help."""
    i = ("delta_m", "delta_s").index(field)
    return "; ".join(f"{kind.name}: " + (kind.shown[i] if kind.shown else f"{kind.defaults[i]:g}")
                     for kind in RULES.values())


@dataclass(frozen=True)
class Rule:
    """A detection rule with its thresholds."""

    name: str
    delta_m: float
    delta_s: float
    eps: float = 1e-6

    def __post_init__(self):
        rule_kind(self.name)
        for field in ("delta_m", "delta_s", "eps"):
            if not math.isfinite(getattr(self, field)):
                raise UserError(f"{field} must be a finite number")
        if self.eps < 0:
            raise UserError(f"eps must be non-negative, got {self.eps}")

    @property
    def kind(self) -> RuleKind:
        return RULES[self.name]

    @property
    def needs_second_neighbour(self) -> bool:
        return self.kind.needs_second_neighbour


def make_rule(name: str = DEFAULT_RULE, delta_m: float | None = None,
              delta_s: float | None = None, eps: float = 1e-6,
              metric: str | None = None) -> Rule:
    """A :class:`Rule` from a user's thresholds, with the rule's defaults where none is given.

    Each threshold passes the rule's ``check_threshold`` (the ratio rule's lie in (0, 1),
    where its scores live; the absolute rule's are non-negative). A rule in ``metric_units``
    needs both given unless ``metric`` has published defaults (its registry entry's
    ``absolute_defaults``; ``metric=None`` skips that check).
    """
    kind = rule_kind(name)
    published = absolute_default_metrics()
    if (kind.metric_units and metric is not None and metric not in published
            and (delta_m is None or delta_s is None)):
        raise UserError(f"the {name} rule compares raw {metric} distances: give both "
                         "delta_m and delta_s in its units (defaults are published only "
                         f"for {', '.join(published)})")
    default_m, default_s = kind.defaults
    rule = Rule(name, default_m if delta_m is None else _number(delta_m, "delta_m"),
                default_s if delta_s is None else _number(delta_s, "delta_s"), eps)
    for field in ("delta_m", "delta_s"):
        kind.check_threshold(name, field, getattr(rule, field))
    return rule


def _number(value, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise UserError(f"{field} must be a number, got {value!r}")
    return float(value)


def memorization_score(train_dist: np.ndarray, rule: Rule) -> np.ndarray:
    """The quantity compared with δ_m: d1/(d2+ε) (paper) or d1 (absolute). train_dist: (n, k)."""
    return rule.kind.memorization(np.asarray(train_dist, dtype=np.float64), rule.eps)


def spurious_score(train_dist: np.ndarray, synth_dist: np.ndarray, rule: Rule) -> np.ndarray:
    """The quantity compared with δ_s: s1/(d1+s1+ε) (paper) or s1 (absolute)."""
    d1 = np.asarray(train_dist, dtype=np.float64)[:, 0]
    s1 = np.asarray(synth_dist, dtype=np.float64)[:, 0]
    return rule.kind.spurious(d1, s1, rule.eps)


def apply_rule(train_dist: np.ndarray, synth_dist: np.ndarray, rule: Rule) -> np.ndarray:
    """Labels (n,) int8: 0 memorized, 1 spurious, 2 generalized (eqs. 4–6).

    ValueError when the ratio rule's ε is not negligible against the distances (see
    :func:`check_distance_scale`).
    """
    check_distance_scale(train_dist, rule)
    memorized = memorization_score(train_dist, rule) <= rule.delta_m
    spurious = (spurious_score(train_dist, synth_dist, rule) <= rule.delta_s) & ~memorized
    labels = np.full(len(memorized), GENERALIZED, dtype=np.int8)
    labels[spurious] = SPURIOUS
    labels[memorized] = MEMORIZED
    return labels


def check_distance_scale(train_dist: np.ndarray, rule: Rule) -> None:
    """Refuse distances so small that the ratio rule's guard ε would decide the labels.

    The ratios d1/(d2+ε) and s1/(d1+s1+ε) are scale-free only while ε is negligible: the
    median second-neighbour distance d2 (the training set's own spacing; d1 and s1 are 0
    for copies) must exceed ε by ``MIN_DISTANCE_OVER_EPS``. Only for a ``guarded_ratio`` rule.
    """
    d = np.asarray(train_dist, dtype=np.float64)
    if not rule.kind.guarded_ratio or rule.eps == 0 or len(d) == 0 or d.shape[1] < 2:
        return
    scale = float(np.median(d[:, 1]))
    if not scale > MIN_DISTANCE_OVER_EPS * rule.eps:
        raise UserError(f"the distances are too small for the ratio rule (median {scale:.3g} "
                         f"against its guard ε = {rule.eps:g}): ε would decide the labels; "
                         "multiply the data by a constant (the ratios do not change)")


def label_counts(labels: np.ndarray) -> np.ndarray:
    """(3,) counts of memorized, spurious, generalized."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=3)[:3]


@dataclass(frozen=True)
class Neighbours:
    """k nearest training and synthetic neighbours of each evaluated sample, ascending.

    Distances are in the metric's own units (Euclidean for l2, LPIPS for LPIPS).
    """

    train_dist: np.ndarray  # (n, k_train) float64
    train_idx: np.ndarray  # (n, k_train) int64
    synth_dist: np.ndarray  # (n, k_synth) float64
    synth_idx: np.ndarray  # (n, k_synth) int64
    # per row: the nearest two training images are near-duplicates of each other (before
    # any --dedup skipping); None when not checked (fewer than 2 training neighbours)
    duplicate_pair: np.ndarray | None = None
    duplicate_cut: float | None = None  # the near-duplicate distance, metric units
    distinct: bool = False  # train neighbours 2.. skip near-duplicates of the first


def find_neighbours(eval_set, train, synth=None, *, k: int | None = None,
                    metric: str | None = None, memory_budget: int | None = None,
                    progress: bool = False, backend: str = "builtin", state=None,
                    distinct: bool = False) -> Neighbours:
    """Nearest training and synthetic neighbours of every evaluated sample.

    Each set: samples (array or tensor), embedded here with ``metric`` (None: l2), or an
    :class:`~memgen.metrics.features.Embedded` set (embedded once by the caller; metric
    None takes its space). synth=None: the evaluated set is its own synthetic set; each
    sample's own match is excluded by index. synth may be a
    :class:`~memgen.neighbours.ShardSet`: it is then streamed from disk and embedded
    chunk by chunk (restartable through the ``state`` file). k=None takes 5, or fewer when
    a set is smaller; an explicit k must fit both sets. backend: "builtin" or "faiss"
    (exact either way, identical neighbours). distinct=True: the training neighbours after
    the first skip its near-duplicates (module docstring).
    """
    search = get_knn_backend(backend)
    streamed = isinstance(synth, ShardSet)
    (e, t, s), feature_map = embed_sets(metric, eval_set, train, None if streamed else synth)
    e, t = e.vectors, t.vectors
    s = e if synth is None else None if streamed else s.vectors
    n_synth = synth.rows if streamed else len(s) - int(synth is None)
    if n_synth < 1:
        raise UserError("the synthetic set needs at least one sample other than the "
                         "evaluated one (the evaluated set has 1 sample and no --synth)")
    k_train, k_synth = _neighbour_counts(k, len(t), n_synth)
    train_dist, train_idx, pair, cut = _train_neighbours(
        e, t, k_train, search, feature_map.power, memory_budget, progress, distinct)
    if streamed:
        near_s = stream_knn(e, synth, k_synth, feature_map=feature_map, backend=backend,
                            memory_budget=memory_budget, state=state, progress=progress)
    else:
        near_s = search(e, s, k_synth, exclude_self=synth is None, memory_budget=memory_budget,
                        progress=progress)
    power = feature_map.power
    return Neighbours(train_dist=train_dist ** power, train_idx=train_idx,
                      synth_dist=near_s.dist.cpu().numpy() ** power,
                      synth_idx=near_s.idx.cpu().numpy(), duplicate_pair=pair,
                      duplicate_cut=None if cut is None else cut ** power, distinct=distinct)


def _train_neighbours(e: torch.Tensor, t: torch.Tensor, k_train: int, search, power: int,
                      memory_budget, progress: bool, distinct: bool):
    """(dist, idx) of the k_train nearest training rows in embedding units (2.. skipping
    near-duplicates of the first with ``distinct``), the (n,) near-duplicate flag of the
    first two and the near-duplicate cut (both None for k_train = 1)."""
    k_search = min(len(t), k_train + DEDUP_EXTRA) if distinct and k_train > 1 else k_train
    near_t = search(e, t, k_search, memory_budget=memory_budget, progress=progress)
    train_dist, train_idx = near_t.dist.cpu().numpy(), near_t.idx.cpu().numpy()
    pair, cut = None, None
    if k_train > 1:
        cut = _near_duplicate_cut(t, search, memory_budget, power)
        twin = _twin_of_first(t, train_idx if distinct else train_idx[:, :2], cut,
                              memory_budget)
        pair = twin[:, 1]
        if distinct:
            train_dist, train_idx = _skip_twins(train_dist, train_idx, twin, k_train)
    return train_dist, train_idx, pair, cut


def _near_duplicate_cut(t: torch.Tensor, search, memory_budget, power: int) -> float:
    """The near-duplicate distance of ``memgen.metrics.hygiene``: NEAR_DUPLICATE_DELTA × the
    median nearest-other distance of the training set in the metric's units (d = ‖Δφ‖^p;
    on a seeded sample of at most ``_CUT_SAMPLE`` of them), returned in embedding units
    (its p-th root), where the gaps are measured."""
    n = len(t)
    rows = np.arange(n) if n <= _CUT_SAMPLE else np.sort(
        np.random.default_rng(0).choice(n, _CUT_SAMPLE, replace=False))
    near = search(t[torch.from_numpy(rows)], t, 2, memory_budget=memory_budget)
    dist, idx = near.dist.cpu().numpy(), near.idx.cpu().numpy()
    other = np.where(idx[:, 0] == rows, dist[:, 1], dist[:, 0])  # drop the self-match
    return (NEAR_DUPLICATE_DELTA * float(np.median(other ** power))) ** (1 / power)


def _twin_of_first(t: torch.Tensor, idx: np.ndarray, cut: float,
                   memory_budget: int | None = None) -> np.ndarray:
    """(n, k) bool: training neighbour j of a row is a near-duplicate of its first one.

    Rows are taken in blocks whose float64 neighbours and differences fit the budget."""
    twin = np.zeros(idx.shape, dtype=bool)
    per_row = 2 * idx.shape[1] * t[0].numel() * 8  # the (k, D) points and their gaps
    rows_per_step = max(1, (memory_budget or DEFAULT_MEMORY_BUDGET) // per_row)
    for r0 in range(0, len(idx), rows_per_step):
        block = torch.from_numpy(idx[r0:r0 + rows_per_step]).to(t.device)
        points = t[block].double()  # (rows, k, D)
        gap = torch.linalg.vector_norm(points - points[:, :1], dim=-1)
        twin[r0:r0 + len(block)] = (gap <= cut).cpu().numpy()
    twin[:, 0] = False
    return twin


def _skip_twins(dist: np.ndarray, idx: np.ndarray, twin: np.ndarray, k: int):
    """The first neighbour, then the next ones that are not near-duplicates of it: k in
    all, or as many as every row has (at least 2)."""
    keep = ~twin
    k = min(k, int(keep.sum(axis=1).min()))
    if k < 2:
        raise UserError(f"--dedup: a training image has more than {DEDUP_EXTRA} "
                         "near-duplicates (or the training set has no two distinct images); "
                         "remove them first (memgen hygiene duplicates)")
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # kept columns first, in order
    rows = np.arange(len(idx))[:, None]
    return dist[rows, order], idx[rows, order]


def _neighbour_counts(k: int | None, n_train: int, n_synth: int) -> tuple[int, int]:
    if k is None:
        return min(DEFAULT_K, n_train), min(DEFAULT_K, n_synth)
    if k < 1:
        raise UserError(f"k must be at least 1, got {k}")
    if k > n_train:
        raise UserError(f"k={k} is larger than the training set ({n_train} samples)")
    if k > n_synth:
        raise UserError(f"k={k} is larger than the synthetic set ({n_synth} samples "
                         "available)")
    return k, k
