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
The distances they read are found by :mod:`memgen.metrics.nearest`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from memgen.errors import UserError
from memgen.metrics.features import (RegistryNames, absolute_default_metrics, registry_entry,
                                     registry_help)

MEMORIZED, SPURIOUS, GENERALIZED = 0, 1, 2
LABEL_NAMES = ("memorized", "spurious", "generalized")
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
    return registry_entry(RULES, name, "rule")


def rule_help() -> str:
    """The --rule help: each registered rule with its entry's help."""
    return registry_help(RULES)


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
