"""Floor 3 — measurements on sets of samples.

Feature maps (pixels, LPIPS), the detection rules of the paper (eqs. 4–6, ``rules``), the
classification of one evaluated set with its null rates and sample quality (``classify``),
exact fraction intervals, capacities (eqs. 1–3, bootstrapped), training-set hygiene and
τ_mem.

May import: floors 0–2 (``memgen.errors``, ``memgen.io``, ``memgen.data``, the exact kNN of
``memgen.neighbours``) and this package.
"""

from memgen.metrics.capacity import Capacity, FractionTable, capacities, read_fraction_table
from memgen.metrics.null import NullResult, calibrate, null_rates
from memgen.metrics.quality import Quality, prdc
from memgen.metrics.nearest import Neighbours, find_neighbours
from memgen.metrics.rules import (GENERALIZED, LABEL_NAMES, MEMORIZED, SPURIOUS, Rule, apply_rule,
                                  make_rule)
from memgen.metrics.stats import FractionEstimate, clopper_pearson, estimate_fractions

__all__ = [
    "Capacity", "FractionEstimate", "FractionTable", "GENERALIZED", "LABEL_NAMES",
    "MEMORIZED", "Neighbours", "NullResult", "Quality", "Rule", "SPURIOUS", "apply_rule",
    "calibrate", "capacities", "clopper_pearson", "estimate_fractions", "find_neighbours",
    "make_rule", "null_rates", "prdc", "read_fraction_table",
]
