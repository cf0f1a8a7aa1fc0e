"""The public Python API behind ``memgen.classify``, ``memgen.capacities`` and
``memgen.sweep``: the command line's arguments, as functions on arrays and paths.

Inputs follow the command line's input contract (``memgen.io``): vectors (N×D) as they
are, images (N×C×H×W) floats in [-1, 1] or uint8 (converted from [0, 255]); any other
image range or dtype raises UserError unless ``input_range=(LO, HI)`` converts it. A str
or Path is read as a sample file (``synth`` may also be a folder or glob of shards,
streamed from disk).

Parameters carry the command line's names and units: ``eval`` is ``--eval`` (formerly
``samples``), ``bootstrap`` is ``--bootstrap`` (formerly ``n_resamples``), ``memory_budget``
is ``--memory-budget`` in MiB (formerly bytes: a value of 2**20 or more is still read as
bytes). The former names and a budget in bytes work, with a DeprecationWarning.
"""

from __future__ import annotations

import warnings
from dataclasses import fields
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from memgen.errors import UserError
from memgen.experiments.config import SweepConfig, load_config
from memgen.experiments.sweep import run_sweep
from memgen.io import check_ranges, load_samples, output_locks, validate_samples
from memgen.metrics.capacity import (Capacities, FractionTable,
                                     capacities as table_capacities, read_fraction_table)
from memgen.metrics.classify import (Classification, ClassifyConfig, classify_sets,
                                     streamed_sample)
from memgen.neighbours import ShardSet, knn as knn_bytes, open_shards

SampleSet = np.ndarray | torch.Tensor | str | Path


def classify(train: SampleSet, eval: SampleSet | None = None,  # noqa: A002 (--eval)
             synth: SampleSet | None = None, *, heldout: SampleSet | None = None,
             state: str | None = None, progress: bool = False,
             input_range: tuple[float, float] | dict | None = None,
             allow_range_mismatch: bool = False, **options) -> Classification:
    """Label every sample memorized, spurious or generalized (eqs. 4–6) — ``memgen classify``.

    train: the training set S (--train); eval: the evaluated set (--eval); synth: the
    synthetic set S′ (--synth; None: the evaluated samples are their own, self-matches
    excluded); heldout: real data not in S for null rates, calibrated thresholds and sample
    quality; state: restart file for a streamed synth (a folder or glob of shards).
    options: the fields of ClassifyConfig under their own names, with the command line's
    defaults and units (``rule="paper"``, ``delta_m``, ``delta_s``, ``metric="l2"``, ``k``,
    ``alpha=0.05``, ``calibrate``, ``seed=0``, ``memory_budget=512`` MiB for one block of
    pairwise distances, ``backend="builtin"``, ``dedup``; ``memgen classify --help``).
    input_range: (LO, HI) of every set's values, converted to [-1, 1] (``--input-range``), or
    {name: (LO, HI)} for some of them (names: train, eval, synth, heldout).
    allow_range_mismatch: classify sets whose ranges clearly differ
    (``memgen.io.check_ranges``; ``--allow-range-mismatch``). The result has
    ``labels`` (0 memorized, 1 spurious, 2 generalized; ``label_names``, ``named_labels``),
    ``fractions``, ``ci95``, ``counts``, ``null_rates`` and ``null_ci95`` by label name,
    ``neighbours``, ``summary()`` and ``to_frame()`` (pandas).
    """
    known = {f.name: f for f in fields(ClassifyConfig)}
    former = {name: value for name, value in options.items() if name not in known}
    eval = _renamed(former, "samples", "eval", eval, "classify")
    if eval is None:
        raise UserError("give the evaluated samples: classify(train, eval, ...)")
    given = {name: options.get(name, f.metadata.get("default", f.default))
             for name, f in known.items()}  # the command line's defaults
    for name in [name for name, f in known.items() if f.metadata.get("unit") == "MiB"]:
        given[name] = _budget(given[name])  # MiB to bytes (here: the warning's stack level)
    config = ClassifyConfig(**given)
    for name in [name for name, f in known.items() if f.metadata.get("seed")]:
        seed = getattr(config, name)
        if seed < 0:  # --seed's range (the CLI's SEED type)
            raise UserError(f"{name}: a seed is a non-negative integer, got {seed}")
    config.make_rule()  # bad thresholds fail before any data is read
    ranges = _ranges(input_range)
    sets = {name: None if x is None else _samples(x, name, ranges.get(name))
            for name, x in (("train", train), ("eval", eval), ("heldout", heldout))}
    synth = _synthetic(synth, ranges.get("synth"))
    if state is not None and not isinstance(synth, ShardSet):
        raise UserError("state: a restart file is for a streamed synth (a folder or glob of "
                        "shards); this synth is read whole")
    check_ranges(allow_range_mismatch, "allow_range_mismatch=True", **sets,
                 synth=streamed_sample(synth, "synth") if isinstance(synth, ShardSet) else synth)
    return classify_sets(sets["eval"], sets["train"], synth, sets["heldout"], config,
                         progress=progress, state=None if state is None else str(state))


def knn(query, ref, k: int, exclude_self: bool = False, *, memory_budget: float | None = 512,
        margin: int = 8, progress: bool = False):
    """Exact top-k Euclidean neighbours of each query row among the rows of ``ref``:
    ``(dist, idx)``, each (n, k), ascending (``memgen.neighbours.knn``). exclude_self:
    query *is* ref, and row i's own match is dropped by index. memory_budget: MiB for one
    block of distances, as the command line's --memory-budget."""
    return knn_bytes(query, ref, k, exclude_self, memory_budget=_budget(memory_budget),
                     margin=margin, progress=progress)


def capacities(table: FractionTable | str | Path, epsilon: float = 0.1,
               bootstrap: int = 1000, seed: int = 0, **former) -> Capacities:
    """MC, SC and GC (eqs. 1–3) of a fraction table or a fractions.csv — ``memgen
    capacities`` (--epsilon, --bootstrap resamples, --seed). Each Capacity has its value,
    the share of bootstrap resamples that reach it and an interval; printed, the result is
    the command's three lines. MC and GC count only K whose samples are on the data (where
    the table has precision columns: ``memgen.metrics.capacity``). Bad input: UserError."""
    bootstrap = _renamed(former, "n_resamples", "bootstrap", bootstrap, "capacities",
                         default=1000)
    if isinstance(table, (str, Path)):
        table = read_fraction_table(table)
    elif not isinstance(table, FractionTable):
        raise UserError(f"give a FractionTable or the path of a fractions.csv, not "
                        f"{type(table).__name__}")
    return table_capacities(table, epsilon, bootstrap, seed)


def sweep(config: SweepConfig | str | Path, out: str | Path, overrides: Sequence[str] = (),
          *, overwrite: bool = False, progress: bool = True) -> Capacities:
    """Run a sweep over K — ``memgen sweep CONFIG --out OUT [--set key=value ...]``, the
    overrides being --set's — and return its capacities (``as_dict()``: capacities.json);
    every output lands in ``out``."""
    config_file = None
    if isinstance(overrides, str):  # one "key=value" would be read a letter at a time
        overrides = [overrides]
    if not isinstance(config, SweepConfig):
        config_file, config = config, load_config(config, overrides)
    elif overrides:
        raise UserError("overrides apply to a config file; change the SweepConfig instead")
    with output_locks():  # the run folder is held, as the CLI holds it, until the sweep ends
        return run_sweep(config, Path(out), progress=progress, overwrite=overwrite,
                         config_file=config_file).capacities


def _renamed(former: dict, old: str, new: str, value, function: str, default=None):
    """The value of a renamed parameter given by its former name (DeprecationWarning);
    TypeError for any other unknown keyword, as Python gives."""
    unknown = sorted(set(former) - {old})
    if unknown:
        raise TypeError(f"{function}() got an unexpected keyword argument {unknown[0]!r}")
    if old not in former:
        return value
    if value is not default:
        raise TypeError(f"{function}() got both {new!r} and its former name {old!r}")
    warnings.warn(f"{function}(): {old}= is now {new}= (the command line's name)",
                  DeprecationWarning, stacklevel=3)
    return former[old]


def _budget(mib) -> int | None:
    """--memory-budget's MiB in bytes (None: the default, 512 MiB); 2**20 or more (over a
    TiB) is a budget given in bytes, as this API took it before (DeprecationWarning)."""
    if mib is None:
        return None
    if isinstance(mib, bool) or not isinstance(mib, (int, float, np.integer, np.floating)) \
            or not 0 < mib < float("inf"):
        raise UserError(f"memory_budget must be a positive number of MiB, got {mib!r}")
    if mib >= 2**20:
        warnings.warn(f"memory_budget={mib} read as bytes: it is in MiB now, as "
                      "--memory-budget", DeprecationWarning, stacklevel=3)
        return int(mib)
    return max(1, int(mib * 2**20))


API_SETS = ("train", "eval", "synth", "heldout")


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
