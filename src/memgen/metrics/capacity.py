"""Memorization, spurious and generalization capacities (paper eqs. 1–3).

From a table of label fractions against the training-set size K:
    MC = max{K : P(memorized) ≥ 1 − ε}      (eq. 1)
    SC = argmax_K P(spurious)                 (eq. 2; ties: the smallest K;
                                               not reached if P(spurious) = 0 at every K)
    GC = min{K : P(generalized) ≥ 1 − ε}    (eq. 3)
A capacity whose condition holds at no K is "not reached" (None), never invented.
Intervals come from bootstrapping every K's labels jointly and recomputing.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memgen.metrics.classify import LABEL_NAMES
from memgen.metrics.stats import DEFAULT_RESAMPLES, bootstrap_counts

DEFAULT_EPSILON = 0.1


@dataclass(frozen=True)
class Capacity:
    """One capacity: its value (None when not reached) and a 95% bootstrap interval.

    reached_share: share of bootstrap resamples in which the condition holds at some K;
    lo/hi are percentiles over those resamples (None when none reaches it).
    """

    name: str
    value: int | None
    lo: int | None = None
    hi: int | None = None
    reached_share: float | None = None

    def as_dict(self) -> dict:
        return {"value": self.value, "ci95": [self.lo, self.hi],
                "reached_share": self.reached_share}


@dataclass(frozen=True)
class FractionTable:
    """Fractions against K, sorted by K. fractions, lo, hi: (M, 3); n_eval: (M,)."""

    K: np.ndarray
    fractions: np.ndarray
    n_eval: np.ndarray | None = None
    lo: np.ndarray | None = None
    hi: np.ndarray | None = None


def capacity_values(K: np.ndarray, fractions: np.ndarray, eps: float = DEFAULT_EPSILON):
    """(MC, SC, GC) from sorted K (M,) and fractions (M, 3); None where not reached."""
    K = np.asarray(K)
    mem, spur, gen = np.asarray(fractions, dtype=np.float64).T
    # A tiny tolerance keeps exact hits such as 0.9 ≥ 1 − 0.1 from failing in floating point.
    tol = 1e-12
    mc = K[mem >= 1 - eps - tol]
    gc = K[gen >= 1 - eps - tol]
    return (int(mc.max()) if len(mc) else None,
            int(K[int(np.argmax(spur))]) if spur.max() > 0 else None,
            int(gc.min()) if len(gc) else None)


def capacities(table: FractionTable, eps: float = DEFAULT_EPSILON,
               n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict[str, Capacity]:
    """MC, SC and GC of a fraction table, with bootstrap intervals when n_eval is known."""
    if not 0 < eps < 1:
        raise ValueError(f"epsilon must lie in (0, 1), got {eps}")
    values = capacity_values(table.K, table.fractions, eps)
    names = ("MC", "SC", "GC")
    if table.n_eval is None:
        return {name: Capacity(name, v) for name, v in zip(names, values)}
    rng = np.random.default_rng(seed)
    counts = np.rint(table.fractions * table.n_eval[:, None]).astype(np.int64)
    boot = np.stack([bootstrap_counts(c, n_resamples, rng) / c.sum() for c in counts], axis=1)
    draws = [capacity_values(table.K, b, eps) for b in boot]  # n_resamples × (MC, SC, GC)
    return {name: _with_interval(name, value, [d[j] for d in draws])
            for j, (name, value) in enumerate(zip(names, values))}


def _with_interval(name: str, value: int | None, draws: list) -> Capacity:
    reached = np.array([d for d in draws if d is not None])
    share = len(reached) / len(draws)
    if len(reached) == 0:
        return Capacity(name, value, None, None, share)
    lo, hi = np.quantile(reached, [0.025, 0.975], method="inverted_cdf")
    return Capacity(name, value, int(lo), int(hi), share)


def read_fraction_table(path: str | Path) -> FractionTable:
    """Read a fractions.csv (columns K, memorized, spurious, generalized[, n_eval])."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path} holds no rows")
    missing = [c for c in ("K", *LABEL_NAMES) if c not in rows[0]]
    if missing:
        raise ValueError(f"{path} lacks the column(s) {', '.join(missing)}")
    try:
        K = np.array([int(float(r["K"])) for r in rows])
        fractions = np.array([[float(r[c]) for c in LABEL_NAMES] for r in rows])
        n_eval = _column(rows, ("n_eval",), int)
        lo = _column(rows, [f"{c}_lo" for c in LABEL_NAMES], float)
        hi = _column(rows, [f"{c}_hi" for c in LABEL_NAMES], float)
    except ValueError as err:
        raise ValueError(f"{path}: non-numeric entry ({err})") from None
    if not np.isfinite(fractions).all() or (fractions < 0).any() or (fractions > 1).any():
        raise ValueError(f"{path}: fractions must be finite numbers in [0, 1]")
    if len(np.unique(K)) != len(K):
        raise ValueError(f"{path}: each K may appear only once")
    order = np.argsort(K)
    pick = lambda a: None if a is None else a[order]  # noqa: E731
    return FractionTable(K[order], fractions[order], pick(n_eval), pick(lo), pick(hi))


def _column(rows: list[dict], names, kind):
    """The named columns as an array (squeezed for one name), or None if any is absent."""
    if not all(name in rows[0] and all(r[name] for r in rows) for name in names):
        return None
    values = np.array([[kind(float(r[name])) for name in names] for r in rows])
    return values[:, 0] if len(names) == 1 else values
