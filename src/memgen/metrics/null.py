"""Null rates and calibrated thresholds from held-out real data.

The spurious test compares a distance into S′ with a distance into S, sets of
different sizes; in low intrinsic dimension a perfect generalizer is then flagged
"spurious" often (≈60% on the unit circle at K = 1000, |S′| = 4000). The null run
asks what the rule says about data that are, by construction, neither copies nor
recurring attractors: held-out real samples, in place of both the evaluated and the
synthetic set, at the same sizes. Its label rates are the false-detection rates
that every observed fraction must be read against; each rate carries its exact
Clopper–Pearson interval (``metrics.stats``).

Calibration: the loosest thresholds at which the null rate of each detection
(memorized, spurious) is ≤ α — δ_m first, then δ_s among samples not memorized.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from memgen.errors import UserError
from memgen.metrics.features import Embedded
from memgen.metrics.nearest import Neighbours, find_neighbours
from memgen.metrics.rules import Rule, apply_rule, memorization_score, spurious_score
from memgen.metrics.stats import FractionEstimate, estimate_fractions

DEFAULT_ALPHA = 0.05


@dataclass(frozen=True)
class NullResult:
    """The rule applied to held-out real data, and thresholds calibrated on it."""

    n_eval: int
    n_synth: int
    estimate: FractionEstimate  # label rates under the null, with exact intervals
    alpha: float
    calibrated: Rule  # loosest thresholds with null detection rates ≤ alpha
    calibrated_estimate: FractionEstimate  # null label rates under the calibrated rule

    def as_dict(self) -> dict:
        rates = self.estimate.as_dict()
        return {"n_eval": self.n_eval, "n_synth": self.n_synth,
                "fractions": rates["fractions"], "ci95": rates["ci95"],
                "interval": rates["interval"], "alpha": self.alpha,
                "calibrated": {"delta_m": self.calibrated.delta_m,
                               "delta_s": self.calibrated.delta_s,
                               "fractions": self.calibrated_estimate.as_dict()["fractions"]}}


def null_sizes(n_heldout: int, n_eval: int, n_synth: int | None) -> tuple[int, int | None]:
    """Sizes of the null evaluated and synthetic sets that a held-out pool allows.

    n_synth=None: the evaluated set is its own synthetic set. The synthetic size sets
    the null rate, so it is kept whole where possible; the evaluated set (which only
    sets the precision) gives way first, down to a quarter of the pool.
    """
    if n_synth is None:
        return min(n_eval, n_heldout), None
    e = min(n_eval, max(n_heldout - n_synth, n_heldout // 4, 1))
    return e, min(n_synth, n_heldout - e)


def calibrate(null: Neighbours, rule: Rule, alpha: float = DEFAULT_ALPHA) -> Rule:
    """The loosest (δ_m, δ_s) whose detections flag at most ⌊α·n⌋ null samples each."""
    if not 0 <= alpha < 1:
        raise UserError(f"alpha must lie in [0, 1), got {alpha}")
    n_allowed = int(np.floor(alpha * len(null.train_dist)))
    mem = memorization_score(null.train_dist, rule)
    delta_m = _loosest_threshold(mem, n_allowed, rule.delta_m)
    spur = spurious_score(null.train_dist, null.synth_dist, rule)[mem > delta_m]
    delta_s = _loosest_threshold(spur, n_allowed, rule.delta_s)
    return replace(rule, delta_m=delta_m, delta_s=delta_s)


def _loosest_threshold(scores: np.ndarray, n_allowed: int, unconstrained: float) -> float:
    """Largest δ with #{score ≤ δ} ≤ n_allowed: just below the (n_allowed+1)-th score.

    When every score may be flagged, the largest score (or ``unconstrained`` if none).
    """
    s = np.sort(scores)
    if n_allowed >= len(s):
        return float(s[-1]) if len(s) else unconstrained
    return float(np.nextafter(s[n_allowed], -np.inf))


def null_rates(train, heldout, rule: Rule, *, n_eval: int, n_synth: int | None,
               alpha: float = DEFAULT_ALPHA, k: int | None = None,
               metric: str | None = None, seed: int = 0, memory_budget: int | None = None,
               progress: bool = False, backend: str = "builtin",
               distinct: bool = False) -> NullResult:
    """Apply ``rule`` with held-out real data as both evaluated and synthetic sets.

    train, heldout: samples, embedded here with ``metric`` (None: l2), or
    :class:`~memgen.metrics.features.Embedded` sets (a classify's, embedded once: the null
    sets are rows of the held-out embedding). seed: the permutation that draws the null
    evaluated and synthetic sets from ``heldout``. distinct: as in
    :func:`~memgen.metrics.nearest.find_neighbours` (``--dedup``).
    """
    if len(heldout) < 2:
        raise UserError(f"the null run needs at least 2 held-out samples, got {len(heldout)}")
    e, s = null_sizes(len(heldout), n_eval, n_synth)
    order = np.random.default_rng(seed).permutation(len(heldout))
    null_eval = _rows(heldout, order[:e])  # raw samples: only the drawn rows get embedded
    null_synth = None if s is None else _rows(heldout, order[e:e + s])
    near = find_neighbours(null_eval, train, null_synth, k=k, metric=metric,
                           memory_budget=memory_budget, progress=progress, backend=backend,
                           distinct=distinct)
    calibrated = calibrate(near, rule, alpha)
    return NullResult(
        n_eval=e, n_synth=e if s is None else s, alpha=alpha, calibrated=calibrated,
        estimate=estimate_fractions(apply_rule(near.train_dist, near.synth_dist, rule)),
        calibrated_estimate=estimate_fractions(
            apply_rule(near.train_dist, near.synth_dist, calibrated)))


def _rows(samples, idx: np.ndarray):
    """Rows ``idx`` of a set of samples, or of an embedded set (not embedded again)."""
    return samples.rows(idx) if isinstance(samples, Embedded) else samples[idx]
