"""Memorization, spurious and generalization capacities (paper eqs. 1–3).

From a table of label fractions against the training-set size K:
    MC = max{K : P(memorized) ≥ 1 − ε}      (eq. 1)
    SC = argmax_{K above null} P(spurious)    (eq. 2; ties: the smallest K)
    GC = min{K : P(generalized) ≥ 1 − ε}    (eq. 3)
K is "above null" when the 95% lower bound of P(spurious) exceeds the null spurious rate
(the rate at which the same rule flags held-out real data at that K): spurious samples
are only claimed where they exceed what real data would show. Without null rates every K
with P(spurious) > 0 counts, and SC says "no null rate given".
A capacity whose condition holds at no K is None with a reason ("not reached", or for SC
"not above null"), never invented. A capacity is a max/argmax/min over the grid, with no
closed-form interval (unlike the fractions, which get exact Clopper–Pearson intervals in
``metrics.stats``): its interval comes from a bootstrap — each K's label counts redrawn
from Multinomial(n_eval, p̂), the K independently, and every capacity recomputed, SC's
null rule included — as percentiles (QUANTILE_METHOD) of the resampled capacities. Each
capacity also records the share of resamples that reach it, whether it sits at an end of
the K grid, and notes (MC: the memorized curve rising with K beyond its intervals).
:func:`describe` says all of it in one line, the same in the CLI and the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memgen.errors import UserError
from memgen.io import read_csv_rows
from memgen.metrics.rules import LABEL_NAMES, MEMORIZED, SPURIOUS
from memgen.metrics.stats import QUANTILE_METHOD, clopper_pearson_bounds

DEFAULT_RESAMPLES = 1000
DEFAULT_EPSILON = 0.1
NOT_REACHED = "not reached"
NOT_ABOVE_NULL = "not above null"
NO_NULL = "no null rate given"
AT_EDGE = "at the edge of the K grid — extend the grid"
NOT_MONOTONE = "memorized fraction not monotone in K"


@dataclass(frozen=True)
class Capacity:
    """One capacity: its value (None when not reached) and a 95% bootstrap interval.

    reached_share: share of bootstrap resamples in which the condition holds at some K
    (None without a bootstrap); lo/hi are the 2.5th and 97.5th percentiles
    (QUANTILE_METHOD) of the capacity over those resamples (None when none reaches it).
    at_edge: the value is the first or last K of the grid. reason: why the value is None
    (NOT_REACHED or NOT_ABOVE_NULL). notes: further caveats (NO_NULL, NOT_MONOTONE).
    """

    name: str
    value: int | None
    lo: int | None = None
    hi: int | None = None
    reached_share: float | None = None
    at_edge: bool = False
    reason: str | None = None
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return {"value": self.value, "ci95": [self.lo, self.hi],
                "reached_share": self.reached_share, "at_edge": self.at_edge,
                "reason": self.reason, "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, name: str, d: dict) -> Capacity:
        """Inverse of :meth:`as_dict`; keys missing from older capacities.json default."""
        lo, hi = d.get("ci95") or (None, None)
        return cls(name, d.get("value"), lo, hi, d.get("reached_share"),
                   bool(d.get("at_edge", False)), d.get("reason"), tuple(d.get("notes", ())))


@dataclass(frozen=True)
class FractionTable:
    """Fractions against K, sorted by K. fractions, lo, hi, null: (M, 3); n_eval: (M,).

    null: the null rate of each label (held-out real data classified by the same rule at
    the same K), or None when not measured.
    """

    K: np.ndarray
    fractions: np.ndarray
    n_eval: np.ndarray | None = None
    lo: np.ndarray | None = None
    hi: np.ndarray | None = None
    null: np.ndarray | None = None


def capacity_values(K: np.ndarray, fractions: np.ndarray, eps: float = DEFAULT_EPSILON,
                    above_null: np.ndarray | None = None):
    """(MC, SC, GC) from sorted K (M,) and fractions (M, 3); None where not reached.

    above_null: (M,) bool, the K where P(spurious) exceeds its null rate; SC is the argmax
    of P(spurious) over those K only (None if there are none). None: every K counts.
    """
    K = np.asarray(K)
    mem, spur, gen = np.asarray(fractions, dtype=np.float64).T
    # A tiny tolerance keeps exact hits such as 0.9 ≥ 1 − 0.1 from failing in floating point.
    tol = 1e-12
    mc = K[mem >= 1 - eps - tol]
    gc = K[gen >= 1 - eps - tol]
    ok = spur > 0 if above_null is None else np.asarray(above_null, dtype=bool) & (spur > 0)
    return (int(mc.max()) if len(mc) else None,
            int(K[int(np.argmax(np.where(ok, spur, -np.inf)))]) if ok.any() else None,
            int(gc.min()) if len(gc) else None)


def label_bounds(table: FractionTable, label: int) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi), each (M,): 95% bounds of one label's fraction at every K.

    The table's own intervals where given, else Clopper–Pearson from n_eval, else the point
    estimate itself (no uncertainty known).
    """
    p = table.fractions[:, label]
    if table.lo is not None and table.hi is not None:
        return table.lo[:, label], table.hi[:, label]
    if table.n_eval is not None:
        counts = np.rint(p * table.n_eval).astype(np.int64)
        return clopper_pearson_bounds(counts, table.n_eval)
    return p, p


def above_null(table: FractionTable) -> np.ndarray | None:
    """(M,) bool: lo95(P(spurious)) > null spurious rate at each K; None without null rates."""
    if table.null is None:
        return None
    return label_bounds(table, SPURIOUS)[0] > table.null[:, SPURIOUS]


def memorized_not_monotone(table: FractionTable) -> bool:
    """True when P(memorized) rises with K beyond its intervals: lo95 at some K exceeds
    hi95 at a smaller K (eq. 1 presumes a curve that falls with K)."""
    lo, hi = label_bounds(table, MEMORIZED)
    return bool((lo[1:] > np.minimum.accumulate(hi)[:-1]).any())


def capacities(table: FractionTable, eps: float = DEFAULT_EPSILON,
               n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict[str, Capacity]:
    """MC, SC and GC of a fraction table, with bootstrap intervals when n_eval is known."""
    if not 0 < eps < 1:
        raise UserError(f"epsilon must lie in (0, 1), got {eps}")
    if n_resamples < 1:
        raise UserError(f"the number of bootstrap resamples must be at least 1, "
                         f"got {n_resamples}")
    above = above_null(table)
    values = capacity_values(table.K, table.fractions, eps, above)
    draws = _bootstrap(table, eps, n_resamples, seed)  # n_resamples × (MC, SC, GC) or None
    sc_reason = (NOT_ABOVE_NULL if above is not None and table.fractions[:, SPURIOUS].max() > 0
                 else NOT_REACHED)
    reasons = {"MC": NOT_REACHED, "SC": sc_reason, "GC": NOT_REACHED}
    notes = {"MC": (NOT_MONOTONE,) if memorized_not_monotone(table) else (),
             "SC": (NO_NULL,) if above is None else (), "GC": ()}
    return {name: _capacity(name, value, None if draws is None else [d[j] for d in draws],
                            table.K, reasons[name], notes[name])
            for j, (name, value) in enumerate(zip(("MC", "SC", "GC"), values))}


def bootstrap_counts(counts: np.ndarray, n_resamples: int, rng: np.random.Generator):
    """(n_resamples, 3) label counts of bootstrap resamples of a set with these counts.

    Resampling n labels with replacement and counting is exactly a draw from
    Multinomial(n, p̂): the paper's resampling loop at a fraction of the cost.
    """
    counts = np.asarray(counts, dtype=np.int64)
    n = int(counts.sum())
    if n == 0:
        raise UserError("cannot bootstrap an empty set of labels")
    return rng.multinomial(n, counts / n, size=n_resamples)


def _bootstrap(table: FractionTable, eps: float, n_resamples: int, seed: int):
    """(MC, SC, GC) of every resample (each K's labels drawn from Multinomial(n_eval, p̂)).

    SC's null rule is applied within each resample: its spurious lower bound is its own
    fraction less the observed margin p̂ − lo95, compared with the same null rate.
    """
    if table.n_eval is None:
        return None
    rng = np.random.default_rng(seed)
    counts = np.rint(table.fractions * table.n_eval[:, None]).astype(np.int64)
    boot = np.stack([bootstrap_counts(c, n_resamples, rng) / c.sum() for c in counts], axis=1)
    if table.null is None:
        return [capacity_values(table.K, b, eps) for b in boot]
    margin = table.fractions[:, SPURIOUS] - label_bounds(table, SPURIOUS)[0]
    null = table.null[:, SPURIOUS]
    return [capacity_values(table.K, b, eps, b[:, SPURIOUS] - margin > null) for b in boot]


def _capacity(name: str, value: int | None, draws: list | None, K: np.ndarray, reason: str,
              notes: tuple[str, ...]) -> Capacity:
    at_edge = value is not None and value in (int(K[0]), int(K[-1]))
    reason = None if value is not None else reason
    if draws is None:
        return Capacity(name, value, at_edge=at_edge, reason=reason, notes=notes)
    reached = np.array([d for d in draws if d is not None])
    share = len(reached) / len(draws)
    lo = hi = None
    if len(reached):
        lo, hi = (int(q) for q in np.quantile(reached, [0.025, 0.975], method=QUANTILE_METHOD))
    return Capacity(name, value, lo, hi, share, at_edge, reason, notes)


def describe(c: Capacity) -> str:
    """The one line that says a capacity, in the CLI and in the report, e.g.
    "MC: K = 32 (reached in 97% of resamples; 95% CI 8–32)",
    "SC: not above null (reached in 3% of resamples); no null rate given".
    An interval is only ever printed beside the share of resamples that reach it; the
    edge-of-grid flag and the notes follow after "; ".
    """
    head = f"{c.name}: " + (f"K = {c.value}" if c.value is not None
                            else (c.reason or NOT_REACHED))
    if c.reached_share is None:
        inner = "no bootstrap: n_eval unknown"
    else:
        inner = f"reached in {_percent(c.reached_share)} of resamples"
        if c.value is not None and c.lo is not None:
            inner += f"; 95% CI {c.lo}–{c.hi}"
    flags = ((AT_EDGE,) if c.at_edge else ()) + tuple(c.notes)
    return f"{head} ({inner})" + "".join(f"; {f}" for f in flags)


def _percent(share: float) -> str:
    """A share as a whole percentage that never rounds to 0% or 100% unless exact."""
    if 0 < share < 0.005:
        return "<1%"
    if 0.995 <= share < 1:
        return ">99%"
    return f"{share:.0%}"


def read_fraction_table(path: str | Path) -> FractionTable:
    """Read a fractions.csv: columns K, memorized, spurious, generalized, optionally
    n_eval, <label>_lo/_hi and null_<label> (each set used only when complete)."""
    path = Path(path)
    rows = read_csv_rows(path)
    if not rows:
        raise UserError(f"{path} holds no rows")
    missing = [c for c in ("K", *LABEL_NAMES) if c not in rows[0]]
    if missing:
        raise UserError(f"{path} lacks the column(s) {', '.join(missing)}")
    for line, row in enumerate(rows, start=2):
        if None in row or None in row.values():  # csv.DictReader's marks of a ragged row
            raise UserError(f"{path}, line {line}: {len(rows[0])} columns expected, "
                            f"found {len([v for v in row.values() if v is not None])}"
                            f"{' or more' if None in row else ''}")
    try:
        K = np.array([_integer(r["K"]) for r in rows])
        fractions = np.array([[float(r[c]) for c in LABEL_NAMES] for r in rows])
        n_eval = _column(rows, ("n_eval",), _integer)
        lo = _column(rows, [f"{c}_lo" for c in LABEL_NAMES], float)
        hi = _column(rows, [f"{c}_hi" for c in LABEL_NAMES], float)
        null = _column(rows, [f"null_{c}" for c in LABEL_NAMES], float)
    except ValueError as err:
        raise UserError(f"{path}: non-numeric entry ({err})") from None
    _check_table(path, K, fractions, n_eval, lo, hi, null)
    order = np.argsort(K)
    pick = lambda a: None if a is None else a[order]  # noqa: E731
    return FractionTable(K[order], fractions[order], pick(n_eval), pick(lo), pick(hi),
                         pick(null))


def _column(rows: list[dict], names, kind):
    """The named columns as an array (squeezed for one name), or None if any is absent."""
    if not all(name in rows[0] and all(r[name] for r in rows) for name in names):
        return None
    values = np.array([[kind(r[name]) for name in names] for r in rows])
    return values[:, 0] if len(names) == 1 else values


def _integer(text: str) -> int:
    value = float(text)
    if not value.is_integer():
        raise UserError(f"{text!r} is not a whole number")
    return int(value)


def _check_table(path, K, fractions, n_eval, lo, hi, null) -> None:
    """Values a fraction table cannot hold: UserError naming the first one found."""
    if (K < 1).any():
        raise UserError(f"{path}: training-set sizes K must be at least 1, got {K.min()}")
    if len(np.unique(K)) != len(K):
        raise UserError(f"{path}: each K may appear only once")
    if not np.isfinite(fractions).all() or (fractions < 0).any() or (fractions > 1).any():
        raise UserError(f"{path}: fractions must be finite numbers in [0, 1]")
    total = fractions.sum(axis=1)
    if (np.abs(total - 1) > 1e-3).any():
        bad = int(np.argmax(np.abs(total - 1)))
        raise UserError(f"{path}: the three fractions of K = {K[bad]} sum to "
                        f"{total[bad]:.4g}, not 1")
    if n_eval is not None and (n_eval < 1).any():
        raise UserError(f"{path}: n_eval must be at least 1")
    if lo is not None and hi is not None and (
            (lo > fractions + 1e-9).any() or (hi < fractions - 1e-9).any()):
        raise UserError(f"{path}: every interval must contain its fraction (_lo ≤ value "
                        "≤ _hi)")
    if null is not None and not (np.isfinite(null).all() and (0 <= null).all()
                                 and (null <= 1).all()):
        raise UserError(f"{path}: null rates must be finite numbers in [0, 1]")
