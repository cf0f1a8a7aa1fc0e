"""The public Python API behind ``memgen.classify``, ``memgen.capacities`` and
``memgen.sweep``: the command line's arguments, as functions on arrays and paths.

Inputs follow the command line's input contract (``memgen.io``): vectors (N×D) as they
are, images (N×C×H×W) floats in [-1, 1] or uint8 (converted from [0, 255]); any other
image range or dtype raises UserError unless ``input_range=(LO, HI)`` converts it. A str
or Path is read as a sample file (``synth`` may also be a folder or glob of shards,
streamed from disk).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from memgen.errors import UserError
from memgen.experiments.config import SweepConfig, load_config
from memgen.experiments.sweep import run_sweep
from memgen.io import check_ranges, load_samples, validate_samples
from memgen.metrics.capacity import (Capacity, FractionTable, capacities as table_capacities,
                                     read_fraction_table)
from memgen.metrics.classify import (Classification, ClassifyConfig, classify_sets,
                                     streamed_sample)
from memgen.metrics.shards import ShardSet, open_shards

SampleSet = np.ndarray | torch.Tensor | str | Path


def classify(train: SampleSet, samples: SampleSet, synth: SampleSet | None = None, *,
             heldout: SampleSet | None = None, rule: str = "paper",
             delta_m: float | None = None, delta_s: float | None = None, metric: str = "l2",
             k: int | None = None, alpha: float = 0.05, calibrate: bool = False,
             dedup: bool = False, seed: int = 0, backend: str = "builtin",
             memory_budget: int | None = None, progress: bool = False,
             input_range: tuple[float, float] | dict | None = None,
             allow_range_mismatch: bool = False) -> Classification:
    """Label every sample memorized, spurious or generalized (eqs. 4–6) — ``memgen classify``.

    train: the training set S; samples: the evaluated set; synth: the synthetic set S′
    (None: the samples are their own, self-matches excluded); heldout: real data not in S
    for null rates and calibrated thresholds. The result has ``labels`` (0 memorized,
    1 spurious, 2 generalized), ``neighbours`` (distances and indices), ``fractions``,
    ``ci95`` and ``counts`` by label name, the ``null`` rates and ``summary()``.
    input_range: (LO, HI) of every set's values, converted to [-1, 1] (``--input-range``),
    or {name: (LO, HI)} for some of them (names: train, samples, synth, heldout).
    allow_range_mismatch: classify sets whose ranges clearly differ
    (``memgen.io.check_ranges``; ``--allow-range-mismatch``).
    """
    config = ClassifyConfig(rule=rule, delta_m=delta_m, delta_s=delta_s, metric=metric, k=k,
                            alpha=alpha, calibrate=calibrate, seed=seed,
                            memory_budget=memory_budget, backend=backend, dedup=dedup)
    config.make_rule()  # bad thresholds fail before any data is read
    ranges = _ranges(input_range)
    sets = {name: None if x is None else _samples(x, name, ranges.get(name))
            for name, x in (("train", train), ("samples", samples), ("heldout", heldout))}
    synth = _synthetic(synth, ranges.get("synth"))
    check_ranges(allow_range_mismatch, "allow_range_mismatch=True", **sets,
                 synth=streamed_sample(synth, "synth") if isinstance(synth, ShardSet) else synth)
    return classify_sets(sets["samples"], sets["train"], synth, sets["heldout"], config,
                         progress=progress)


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


API_SETS = ("train", "samples", "synth", "heldout")


def _ranges(input_range) -> dict:
    """name → (LO, HI): one range for every set, or a dict for some of them."""
    if input_range is None:
        return {}
    if isinstance(input_range, dict):
        unknown = set(input_range) - set(API_SETS)
        if unknown:
            raise UserError(f"input_range: no set {sorted(unknown)[0]!r} (sets: "
                            f"{', '.join(API_SETS)})")
        return {name: _bounds(r) for name, r in input_range.items()}
    return dict.fromkeys(API_SETS, _bounds(input_range))


def _bounds(r) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in r)
    except (TypeError, ValueError):
        raise UserError(f"input_range: give (LO, HI), got {r!r}") from None
    return lo, hi


def _samples(x: SampleSet, name: str, input_range=None) -> np.ndarray:
    flag = "input_range={{" + repr(name) + ": ({})}}"  # how messages name the conversion
    if isinstance(x, (str, Path)):
        return load_samples(x, name, input_range, flag)
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return validate_samples(np.asarray(x), name, input_range, flag)


def _synthetic(x: SampleSet | None, input_range=None):
    if x is None:
        return None
    if isinstance(x, (str, Path)) and not Path(x).is_file():
        if input_range is not None:
            raise UserError("input_range: a streamed synth is read as it is; convert its "
                            "shards to [-1, 1] (or give an array)")
        return open_shards(x)  # a folder or glob of shards, streamed
    return _samples(x, "synth", input_range)
