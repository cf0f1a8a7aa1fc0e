"""Measurements: exact kNN, feature maps, the detection rules, exact fraction intervals,
capacities (bootstrapped)."""

from memgen.metrics.capacity import Capacity, FractionTable, capacities, read_fraction_table
from memgen.metrics.classify import (GENERALIZED, LABEL_NAMES, MEMORIZED, SPURIOUS, Neighbours,
                                     Rule, apply_rule, find_neighbours, make_rule)
from memgen.metrics.knn import KnnResult, knn, knn_search
from memgen.metrics.null import NullResult, calibrate, null_rates
from memgen.metrics.quality import Quality, prdc
from memgen.metrics.stats import FractionEstimate, clopper_pearson, estimate_fractions

__all__ = [
    "Capacity", "FractionEstimate", "FractionTable", "GENERALIZED", "KnnResult", "LABEL_NAMES",
    "MEMORIZED", "Neighbours", "NullResult", "Quality", "Rule", "SPURIOUS", "apply_rule",
    "calibrate", "capacities", "clopper_pearson", "estimate_fractions", "find_neighbours",
    "knn", "knn_search", "make_rule", "null_rates", "prdc", "read_fraction_table",
]
