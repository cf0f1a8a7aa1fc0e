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

Headlines carry their quality. A fraction says where samples lie relative to the training
and synthetic sets, not whether they look like data: a model that outputs noise has every
sample "generalized". Where the table has the precision of each label's samples against
held-out real data (fractions.csv's ``precision_<label>`` and ``baseline_precision``, the
precision of held-out real data itself), a K counts for MC or GC only if the memorized
(MC) or generalized (GC) samples there have at least QUALITY_SHARE = ½ of the held-out
precision: a capacity whose samples are off the data is not reached, and says so ("GC:
not reached — at K = 8 the generalized samples have precision 0.03 against 0.97 for
held-out data"). Half leaves room for the precision's sampling noise and for a model that
is merely imperfect (the main job's generalized samples: 0.98 against 0.965) while
catching samples that are plainly not data (an untrained model: 0.03 against 0.97). SC
is not gated: spurious states are mixtures of training images and may lie off the data
by nature; a spurious peak below half the held-out precision gets a note instead. The
precisions are measured once per K and not resampled by the bootstrap (each resample uses
the same gate). Tables without precision columns are not gated.
"""

from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memgen.errors import UserError
from memgen.io import read_csv_rows
from memgen.metrics.rules import GENERALIZED, LABEL_NAMES, MEMORIZED, SPURIOUS
from memgen.metrics.stats import QUANTILE_METHOD, clopper_pearson_bounds

DEFAULT_RESAMPLES = 1000
DEFAULT_EPSILON = 0.1
NOT_REACHED = "not reached"
NOT_ABOVE_NULL = "not above null"
NO_NULL = "no null rate given"
AT_EDGE = "at the edge of the K grid — extend the grid"
NOT_MONOTONE = "memorized fraction not monotone in K"
QUALITY_SHARE = 0.5  # a K counts when its samples' precision ≥ this share of held-out's
GATED = {"MC": MEMORIZED, "GC": GENERALIZED}  # the capacities the quality gate applies to


@dataclass(frozen=True)
class OffData:
    """A K where a capacity's condition holds but its samples are off the data: the
    precision of that label's samples against held-out real data is below QUALITY_SHARE
    of held-out data's own precision (``heldout``)."""

    K: int
    label: str
    precision: float
    heldout: float

    def sentence(self) -> str:
        return (f"at K = {self.K} the {self.label} samples have precision "
                f"{self.precision:.2f} against {self.heldout:.2f} for held-out data")

    def as_dict(self) -> dict:
        return {"K": self.K, "label": self.label, "precision": self.precision,
                "heldout_precision": self.heldout}


@dataclass(frozen=True)
class Capacity:
    """One capacity: its value (None when not reached) and a 95% bootstrap interval.

    reached_share: share of bootstrap resamples in which the condition holds at some K
    (None without a bootstrap); lo/hi are the 2.5th and 97.5th percentiles
    (QUANTILE_METHOD) of the capacity over those resamples (None when none reaches it).
    at_edge: the value is the first or last K of the grid. reason: why the value is None
    (NOT_REACHED, NOT_ABOVE_NULL, or NOT_REACHED with the K whose samples are off the
    data). notes: further caveats (NO_NULL, NOT_MONOTONE, K left out for their quality).
    off_data: the K whose fraction met the condition but whose samples are off the data.
    """

    name: str
    value: int | None
    lo: int | None = None
    hi: int | None = None
    reached_share: float | None = None
    at_edge: bool = False
    reason: str | None = None
    notes: tuple[str, ...] = ()
    off_data: tuple[OffData, ...] = ()

    def __str__(self) -> str:
        return describe(self)

    def __repr__(self) -> str:
        return f"Capacity({describe(self)})"

    def __getitem__(self, key: str):
        """The capacities.json entry's keys (``memgen.sweep`` returned those dicts before
        it returned Capacities); deprecated: use the attributes."""
        warnings.warn("capacity[key] is deprecated: use its attributes (value, lo, hi, "
                      "reached_share, ...) or as_dict()", DeprecationWarning, stacklevel=2)
        return self.as_dict()[key]

    def as_dict(self) -> dict:
        return {"value": self.value, "ci95": [self.lo, self.hi],
                "reached_share": self.reached_share, "at_edge": self.at_edge,
                "reason": self.reason, "notes": list(self.notes),
                "off_data": [o.as_dict() for o in self.off_data]}

    @classmethod
    def from_dict(cls, name: str, d: dict) -> Capacity:
        """Inverse of :meth:`as_dict`; keys missing from older capacities.json default."""
        lo, hi = d.get("ci95") or (None, None)
        off = tuple(OffData(o["K"], o["label"], o["precision"], o["heldout_precision"])
                    for o in d.get("off_data", ()))
        return cls(name, d.get("value"), lo, hi, d.get("reached_share"),
                   bool(d.get("at_edge", False)), d.get("reason"), tuple(d.get("notes", ())),
                   off)


class Capacities(dict):
    """{"MC": Capacity, "SC": Capacity, "GC": Capacity} with the ε they were computed
    with; its repr is the three :func:`describe` lines, ``as_dict()`` the capacities.json
    payload."""

    def __init__(self, caps: dict, epsilon: float = DEFAULT_EPSILON):
        super().__init__(caps)
        self.epsilon = epsilon

    def __repr__(self) -> str:
        return "\n".join(describe(c) for c in self.values())

    def as_dict(self) -> dict:
        return {**{name: c.as_dict() for name, c in self.items()}, "epsilon": self.epsilon}

    @classmethod
    def from_dict(cls, payload: dict) -> Capacities:
        """A capacities.json payload as Capacities."""
        return cls({name: Capacity.from_dict(name, payload[name])
                    for name in ("MC", "SC", "GC")},
                   payload.get("epsilon", DEFAULT_EPSILON))


@dataclass(frozen=True)
class FractionTable:
    """Fractions against K, K strictly increasing. fractions, lo, hi, null, precision: (M, 3);
    n_eval, heldout_precision: (M,). Lists convert; anything else a table cannot hold is a
    UserError.

    null: the null rate of each label (held-out real data classified by the same rule at
    the same K), or None when not measured. precision: the precision of each label's
    samples against held-out real data (NaN where a label has no sample or it was not
    measured); heldout_precision: held-out real data's own (the baseline); None when not
    measured.
    """

    K: np.ndarray
    fractions: np.ndarray
    n_eval: np.ndarray | None = None
    lo: np.ndarray | None = None
    hi: np.ndarray | None = None
    null: np.ndarray | None = None
    precision: np.ndarray | None = None
    heldout_precision: np.ndarray | None = None

    def __post_init__(self):
        for name in ("K", "fractions", "n_eval", "lo", "hi", "null", "precision",
                     "heldout_precision"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _array(name, value))
        _check_table("fraction table", self.K, self.fractions, self.n_eval, self.lo, self.hi,
                     self.null, self.precision, self.heldout_precision)
        if (np.diff(self.K) <= 0).any():
            raise UserError("fraction table: K must be in increasing order (sort the rows "
                            "by K)")


def _array(name: str, value) -> np.ndarray:
    """A table column as a float (int for K, n_eval) array, or UserError."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise UserError(f"fraction table: {name} must hold numbers, got "
                        f"{type(value).__name__}") from None
    if name in ("K", "n_eval"):
        if not (np.isfinite(array).all() and (array == np.round(array)).all()):
            raise UserError(f"fraction table: {name} must hold whole numbers")
        array = array.astype(np.int64)
    return array


def capacity_values(K: np.ndarray, fractions: np.ndarray, eps: float = DEFAULT_EPSILON,
                    above_null: np.ndarray | None = None, on_data: np.ndarray | None = None):
    """(MC, SC, GC) from sorted K (M,) and fractions (M, 3); None where not reached.

    above_null: (M,) bool, the K where P(spurious) exceeds its null rate; SC is the argmax
    of P(spurious) over those K only (None if there are none). None: every K counts.
    on_data: (M, 3) bool, the K where each label's samples are on the data (:func:`on_data`);
    MC and GC count only those K. None: every K counts.
    """
    K = np.asarray(K)
    mem, spur, gen = np.asarray(fractions, dtype=np.float64).T
    ok_m, ok_g = (True, True) if on_data is None else (on_data[:, MEMORIZED],
                                                         on_data[:, GENERALIZED])
    # A tiny tolerance keeps exact hits such as 0.9 ≥ 1 − 0.1 from failing in floating point.
    tol = 1e-12
    mc = K[(mem >= 1 - eps - tol) & ok_m]
    gc = K[(gen >= 1 - eps - tol) & ok_g]
    ok = spur > 0 if above_null is None else np.asarray(above_null, dtype=bool) & (spur > 0)
    return (int(mc.max()) if len(mc) else None,
            int(K[int(np.argmax(np.where(ok, spur, -np.inf)))]) if ok.any() else None,
            int(gc.min()) if len(gc) else None)


def on_data(table: FractionTable) -> np.ndarray | None:
    """(M, 3) bool: each label's samples at each K are on the data — their precision
    against held-out data is at least QUALITY_SHARE of held-out data's own, or either is
    unknown (NaN). None when the table has no precision columns."""
    if table.precision is None or table.heldout_precision is None:
        return None
    base = table.heldout_precision[:, None]
    with np.errstate(invalid="ignore"):
        return ~(table.precision < QUALITY_SHARE * base)  # NaN compares False: kept


def off_data(table: FractionTable, label: int, reached: np.ndarray) -> tuple[OffData, ...]:
    """The K (ascending) where ``reached`` (M,) holds but the label's samples are off the
    data."""
    ok = on_data(table)
    if ok is None:
        return ()
    return tuple(OffData(int(table.K[i]), LABEL_NAMES[label], float(table.precision[i, label]),
                         float(table.heldout_precision[i]))
                 for i in np.flatnonzero(reached & ~ok[:, label]))


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
               n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Capacities:
    """MC, SC and GC of a fraction table, with bootstrap intervals when n_eval is known;
    MC and GC only at K whose samples are on the data (module docstring)."""
    if not isinstance(table, FractionTable):
        raise UserError(f"give a FractionTable or a fractions.csv, got {type(table).__name__}")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0 < eps < 1:
        raise UserError(f"epsilon must lie in (0, 1), got {eps!r}")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) \
            or n_resamples < 1:
        raise UserError(f"the number of bootstrap resamples must be a whole number of at "
                        f"least 1, got {n_resamples!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"seed must be a whole number ≥ 0, got {seed!r}")
    above, good = above_null(table), on_data(table)
    values = capacity_values(table.K, table.fractions, eps, above, good)
    draws = _bootstrap(table, eps, n_resamples, seed)  # n_resamples × (MC, SC, GC) or None
    sc_reason = (NOT_ABOVE_NULL if above is not None and table.fractions[:, SPURIOUS].max() > 0
                 else NOT_REACHED)
    reasons = {"MC": NOT_REACHED, "SC": sc_reason, "GC": NOT_REACHED}
    notes = {"MC": (NOT_MONOTONE,) if memorized_not_monotone(table) else (),
             "SC": (NO_NULL,) if above is None else (), "GC": ()}
    caps = {}
    for j, (name, value) in enumerate(zip(("MC", "SC", "GC"), values)):
        off = _off_data(table, name, value, eps)
        reason, note = reasons[name], notes[name]
        if off and value is None:  # the K nearest to where it would have been
            reason = f"{NOT_REACHED} — {off[-1 if name == 'MC' else 0].sentence()}"
        elif off:
            note += tuple(f"{o.sentence()}: not counted" for o in off)
        note += _spurious_note(table, value) if name == "SC" else ()
        caps[name] = _capacity(name, value, None if draws is None else [d[j] for d in draws],
                               table.K, reason, note, off)
    return Capacities(caps, eps)


def _off_data(table: FractionTable, name: str, value: int | None,
              eps: float) -> tuple[OffData, ...]:
    """The K that a gated capacity left out for their quality (MC above, GC below its
    value; all of them when it is not reached)."""
    if name not in GATED:
        return ()
    label = GATED[name]
    reached = table.fractions[:, label] >= 1 - eps - 1e-12
    if value is not None:
        reached &= table.K > value if name == "MC" else table.K < value
    return off_data(table, label, reached)


def _spurious_note(table: FractionTable, value: int | None) -> tuple[str, ...]:
    """SC is not gated (spurious states may lie off the data), but says so when they do."""
    if value is None or on_data(table) is None:
        return ()
    i = int(np.flatnonzero(table.K == value)[0])
    found = off_data(table, SPURIOUS, np.arange(len(table.K)) == i)
    return tuple(f"{o.sentence()} (spurious states may lie off the data)" for o in found)


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
    fraction less the observed margin p̂ − lo95, compared with the same null rate; MC and
    GC's quality gate is the same in every resample.
    """
    if table.n_eval is None:
        return None
    rng = np.random.default_rng(seed)
    counts = np.rint(table.fractions * table.n_eval[:, None]).astype(np.int64)
    boot = np.stack([bootstrap_counts(c, n_resamples, rng) / c.sum() for c in counts], axis=1)
    good = on_data(table)  # measured once per K, the same in every resample
    if table.null is None:
        return [capacity_values(table.K, b, eps, on_data=good) for b in boot]
    margin = table.fractions[:, SPURIOUS] - label_bounds(table, SPURIOUS)[0]
    null = table.null[:, SPURIOUS]
    return [capacity_values(table.K, b, eps, b[:, SPURIOUS] - margin > null, good)
            for b in boot]


def _capacity(name: str, value: int | None, draws: list | None, K: np.ndarray, reason: str,
              notes: tuple[str, ...], off: tuple[OffData, ...] = ()) -> Capacity:
    at_edge = value is not None and value in (int(K[0]), int(K[-1]))
    reason = None if value is not None else reason
    if draws is None:
        return Capacity(name, value, at_edge=at_edge, reason=reason, notes=notes, off_data=off)
    reached = np.array([d for d in draws if d is not None])
    share = len(reached) / len(draws)
    lo = hi = None
    if len(reached):
        lo, hi = (int(q) for q in np.quantile(reached, [0.025, 0.975], method=QUANTILE_METHOD))
    return Capacity(name, value, lo, hi, share, at_edge, reason, notes, off)


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
    n_eval, <label>_lo/_hi and null_<label> (each set used only when complete), and
    precision_<label> with baseline_precision (empty cells: not measured there)."""
    path = Path(path)
    rows = read_csv_rows(path)  # UserError for a labels.npz, an image, ...
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
        precision = _sparse_column(rows, [f"precision_{c}" for c in LABEL_NAMES])
        heldout = _sparse_column(rows, ["baseline_precision"])
    except ValueError as err:
        raise UserError(f"{path}: non-numeric entry ({err})") from None
    if precision is None or heldout is None:
        precision = heldout = None
    _check_table(path, K, fractions, n_eval, lo, hi, null, precision, heldout)
    order = np.argsort(K)
    pick = lambda a: None if a is None else a[order]  # noqa: E731
    return FractionTable(K[order], fractions[order], pick(n_eval), pick(lo), pick(hi),
                         pick(null), pick(precision), pick(heldout))


def _column(rows: list[dict], names, kind):
    """The named columns as an array (squeezed for one name), or None if any is absent."""
    if not all(name in rows[0] and all(r[name] for r in rows) for name in names):
        return None
    values = np.array([[kind(r[name]) for name in names] for r in rows])
    return values[:, 0] if len(names) == 1 else values


def _sparse_column(rows: list[dict], names):
    """The named columns as a float array with NaN for empty cells and for the columns
    the table lacks (squeezed for one name), or None where every cell is empty or absent:
    a table with precision_memorized alone is still gated on it."""
    values = np.array([[float(r[name]) if r.get(name) else np.nan for name in names]
                       for r in rows])
    if np.isnan(values).all():
        return None
    return values[:, 0] if len(names) == 1 else values


def _integer(text: str) -> int:
    value = float(text)
    if not value.is_integer():
        raise UserError(f"{text!r} is not a whole number")
    return int(value)


def _check_table(path, K, fractions, n_eval, lo, hi, null, precision=None,
                 heldout=None) -> None:
    """Shapes and values a fraction table cannot hold: UserError naming the first found."""
    if K.ndim != 1 or len(K) == 0:
        raise UserError(f"{path}: K must be a non-empty list of training-set sizes")
    m = len(K)
    shapes = {"fractions": (fractions, (m, 3)), "n_eval": (n_eval, (m,)), "lo": (lo, (m, 3)),
              "hi": (hi, (m, 3)), "null": (null, (m, 3)), "precision": (precision, (m, 3)),
              "heldout_precision": (heldout, (m,))}
    for name, (value, shape) in shapes.items():
        if value is not None and value.shape != shape:
            raise UserError(f"{path}: {name} has shape {value.shape}, but {m} K need "
                            f"{shape}")
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
    if lo is not None and hi is not None and not (
            np.isfinite(lo).all() and np.isfinite(hi).all() and (lo >= 0).all()
            and (hi <= 1).all()):
        raise UserError(f"{path}: intervals must be finite numbers in [0, 1]")
    for name, value in (("precisions", precision), ("held-out precisions", heldout)):
        if value is not None and ((value < 0) | (value > 1) | np.isinf(value)).any():
            raise UserError(f"{path}: {name} must lie in [0, 1] (or be empty)")
