"""The public Python API behind ``memgen.classify``, ``memgen.capacities`` and
``memgen.sweep``: the command line's arguments, as functions on arrays and paths.

Inputs are converted as the command line converts files: float arrays as they are
(N×D or N×C×H×W), uint8 images from [0, 255] to [-1, 1]; a str or Path is read as a
sample file (``--synth`` may also be a folder or glob of shards, streamed from disk).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from memgen.errors import UserError
from memgen.experiments.config import SweepConfig, load_config
from memgen.experiments.sweep import run_sweep
from memgen.io import load_samples, validate_samples
from memgen.metrics.capacity import (Capacity, FractionTable, capacities as table_capacities,
                                     read_fraction_table)
from memgen.metrics.classify import Classification, ClassifyConfig, classify_sets
from memgen.metrics.shards import open_shards

SampleSet = np.ndarray | torch.Tensor | str | Path


def classify(train: SampleSet, samples: SampleSet, synth: SampleSet | None = None, *,
             heldout: SampleSet | None = None, rule: str = "paper",
             delta_m: float | None = None, delta_s: float | None = None, metric: str = "l2",
             k: int | None = None, alpha: float = 0.05, calibrate: bool = False,
             dedup: bool = False, seed: int = 0, backend: str = "builtin",
             memory_budget: int | None = None, progress: bool = False) -> Classification:
    """Label every sample memorized, spurious or generalized (eqs. 4–6) — ``memgen classify``.

    train: the training set S; samples: the evaluated set; synth: the synthetic set S′
    (None: the samples are their own, self-matches excluded); heldout: real data not in S
    for null rates and calibrated thresholds. The result has ``labels`` (0 memorized,
    1 spurious, 2 generalized), ``neighbours`` (distances and indices), ``fractions``,
    ``ci95`` and ``counts`` by label name, the ``null`` rates and ``summary()``.
    """
    config = ClassifyConfig(rule=rule, delta_m=delta_m, delta_s=delta_s, metric=metric, k=k,
                            alpha=alpha, calibrate=calibrate, seed=seed,
                            memory_budget=memory_budget, backend=backend, dedup=dedup)
    config.make_rule()  # bad thresholds fail before any data is read
    return classify_sets(_samples(samples, "samples"), _samples(train, "train"),
                         _synthetic(synth), None if heldout is None else
                         _samples(heldout, "heldout"), config, progress=progress)


def capacities(table: FractionTable | str | Path, epsilon: float = 0.1,
               n_resamples: int = 1000, seed: int = 0) -> dict[str, Capacity]:
    """MC, SC and GC (eqs. 1–3) of a fraction table or a fractions.csv — ``memgen
    capacities``. Each Capacity has its value, the share of bootstrap resamples that reach
    it and an interval, and ``describe`` says it in one line."""
    if not isinstance(table, FractionTable):
        table = read_fraction_table(table)
    return table_capacities(table, epsilon, n_resamples, seed)


def sweep(config: SweepConfig | str | Path, out: str | Path, overrides: Sequence[str] = (),
          *, overwrite: bool = False, progress: bool = True) -> dict:
    """Run a sweep over K — ``memgen sweep CONFIG --out OUT [--set key=value ...]`` — and
    return its capacities.json payload; every output lands in ``out``."""
    config_file = None
    if not isinstance(config, SweepConfig):
        config_file, config = config, load_config(config, overrides)
    elif overrides:
        raise UserError("overrides apply to a config file; change the SweepConfig instead")
    return run_sweep(config, Path(out), progress=progress, overwrite=overwrite,
                     config_file=config_file)


def _samples(x: SampleSet, name: str) -> np.ndarray:
    if isinstance(x, (str, Path)):
        return load_samples(x, name)
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return validate_samples(np.asarray(x), name)


def _synthetic(x: SampleSet | None):
    if x is None:
        return None
    if isinstance(x, (str, Path)) and not Path(x).is_file():
        return open_shards(x)  # a folder or glob of shards, streamed
    return _samples(x, "synth")
