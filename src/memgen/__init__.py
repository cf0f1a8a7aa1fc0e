"""memgen: memorization, spurious states and generalization in diffusion models.

An implementation of "Memorization to Generalization: Emergence of Diffusion Models
from Associative Memory" (Pham, Raya, Negri, Zaki, Ambrogioni, Krotov; arXiv 2505.21777).

The Python API reads like the command line::

    import memgen

    result = memgen.classify(train, samples, synth, heldout=held, rule="paper", metric="l2")
    result                                                   # a few lines: fractions, null rates
    result.to_frame()                                        # one row per sample (pandas)
    result.fractions["memorized"], result.ci95["memorized"], result.labels
    dist, idx = memgen.knn(samples, train, k=5)              # exact, (query, ref)
    caps = memgen.capacities("runs/tiny/fractions.csv")      # {"MC": ..., "SC": ..., "GC": ...}
    caps = memgen.sweep("configs/tiny.yaml", "runs/tiny")    # the same as memgen sweep

Names are imported when first used: ``import memgen`` itself loads neither torch nor any
model code.
"""

from __future__ import annotations

import importlib

from memgen._version import __version__

_API = {  # public name → the module that defines it
    "classify": "memgen.api", "capacities": "memgen.api", "sweep": "memgen.api",
    "Classification": "memgen.metrics.classify", "knn": "memgen.api",
    "load_config": "memgen.experiments.config", "UserError": "memgen.errors",
}

__all__ = ["Classification", "UserError", "__version__", "capacities", "classify", "knn",
           "load_config", "sweep"]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'memgen' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
