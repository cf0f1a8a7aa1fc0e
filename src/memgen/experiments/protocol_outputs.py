"""Both detection protocols on the same samples, across a sweep (``measure.compare``).

Every (K, steps) state is classified by measure.protocol and by measure.compare's protocol
on the same S_eval (and S′ where the protocol reads one): ``stages.compare_stage``, never
regenerating. From the two cached classifications the aggregate writes

    RUN/protocols.csv               per (K, steps) and protocol: its rule and cutoffs, the
                                    three fractions with exact 95% intervals, the null
                                    rates, and its spurious samples by d1/d2
                                    (``metrics.protocols.copy_breakdown``: near_copy
                                    d1/d2 ≤ 1/3, between ≤ 2/3, equidistant > 2/3)
    RUN/protocols.png               fractions against K, one panel per protocol, null dashed
    RUN/protocols-spurious-K<K>.png images only: per K, the "spurious" samples of the
                                    protocol whose S′ is the evaluated set itself (the
                                    reference), one row pair per d1/d2 bin

Without measure.compare none of them is written (the aggregate removes an earlier run's:
``sweep.AGGREGATE_OUTPUTS``). Orchestration only: the labels and distances are those of
each classify stage's labels.npz.
"""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np

from memgen.experiments.config import SweepConfig, compared_measure
from memgen.experiments.stages import StageResult, classify_key, split
from memgen.io import atomic_file, csv_number, load_samples
from memgen.metrics.protocols import (BREAKDOWN_BINS, DEFAULT_PROTOCOL, breakdown_bins,
                                      copy_breakdown, get_protocol)
from memgen.metrics.rules import LABEL_NAMES, SPURIOUS
from memgen.report.figures import plot_breakdown_grid, plot_protocols, save_figure

PROTOCOLS_CSV = "protocols.csv"
GRID_SAMPLES = 12  # spurious samples shown per d1/d2 bin and K


def protocol_name(summary: dict) -> str:
    """The protocol a classify summary.json was labelled by (the default's omits it)."""
    return summary["config"].get("protocol", DEFAULT_PROTOCOL)


def pairs(results: list[StageResult], snapshots: bool = True) -> list[StageResult]:
    """Every state that was classified by both protocols (with its snapshots), by (K, steps)."""
    states = [s for r in results for s in ((*r.snapshots, r) if snapshots else (r,))]
    return sorted((s for s in states if s.compared is not None),
                  key=lambda s: (s.K, s.steps or 0))


def read_labels(folder: Path) -> dict[str, np.ndarray]:
    """A classify stage's labels.npz: labels, train_dist, train_idx, synth_dist, synth_idx."""
    with np.load(folder / "labels.npz", allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def protocol_row(state: StageResult, classified: StageResult) -> dict:
    """One row of protocols.csv: ``classified`` (the state's main or compared
    classification) with the d1/d2 breakdown of its spurious samples."""
    s = classified.summary
    row = {"K": state.K, "steps": csv_number(state.steps), "protocol": protocol_name(s),
           "rule": s["rule"], "delta_m": csv_number(s["delta_m"]),
           "delta_s": csv_number(s["delta_s"]), "n_eval": s["n_eval"],
           "n_synth": s.get("n_synth", "")}
    null = (s.get("null") or {}).get("fractions", {})
    for name in LABEL_NAMES:
        lo, hi = s["ci95"][name]
        row |= {name: csv_number(s["fractions"][name]), f"{name}_lo": csv_number(lo),
                f"{name}_hi": csv_number(hi), f"null_{name}": csv_number(null.get(name))}
    found = read_labels(classified.folder)
    split_up = (copy_breakdown(found["train_dist"], found["labels"])
                if found["train_dist"].shape[1] >= 2 else {"counts": {}})
    row |= {f"spurious_{name}": split_up["counts"].get(name, "") for name in BREAKDOWN_BINS}
    row["median_d1_over_d2"] = csv_number(split_up.get("median_d1_over_d2"))
    return row


def write_protocols(path: Path, states: list[StageResult]) -> list[dict]:
    """protocols.csv: per state the main classification's row, then the compared one's."""
    rows = [protocol_row(s, c) for s in states for c in (s, s.compared)]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def protocols_figure(path: Path, states: list[StageResult]) -> None:
    """protocols.png from the final states: one panel per protocol."""
    panels = []
    for chosen in (states, [s.compared for s in states]):
        summary = chosen[0].summary
        get = [[[c.summary["fractions"][n], *c.summary["ci95"][n],
                 (c.summary.get("null") or {}).get("fractions", {}).get(n, np.nan)]
                for n in LABEL_NAMES] for c in chosen]
        table = np.array(get, dtype=float)  # (M, 3 labels, fraction lo hi null)
        panels.append({"title": f"{protocol_name(summary)} protocol: {summary['rule']} rule, "
                                f"δ_m = {summary['delta_m']:.3g}, δ_s = {summary['delta_s']:.3g}",
                       "K": np.array([s.K for s in states]), "fractions": table[:, :, 0],
                       "lo": table[:, :, 1], "hi": table[:, :, 2], "null": table[:, :, 3]})
    save_figure(plot_protocols(panels), path, dpi=130)


def breakdown_grid(path: Path, state: StageResult, pool: np.ndarray,
                   config: SweepConfig) -> bool:
    """protocols-spurious-K<K>.png: the spurious samples of the classification whose S′ is
    the evaluated set itself, up to GRID_SAMPLES per d1/d2 bin, each above its nearest
    training image; False (nothing written) when neither is such a protocol."""
    own = [c for c in (state, state.compared)
           if get_protocol(protocol_name(c.summary)).own_synthetic]
    if not own:
        return False
    found = read_labels(own[0].folder)
    samples, train = load_samples(state.eval_path, own=True), split(pool, state.K, config)[0]
    bins = breakdown_bins(found["train_dist"])
    groups = {}
    for code, name in enumerate(BREAKDOWN_BINS):
        chosen = np.flatnonzero((found["labels"] == SPURIOUS) & (bins == code))
        shown = chosen[:GRID_SAMPLES]
        groups[f"{name}, {len(chosen)} in all"] = (samples[shown],
                                                   train[found["train_idx"][shown, 0]])
    save_figure(plot_breakdown_grid(groups, title=f"K = {state.K}: spurious by the "
                                    f"{protocol_name(own[0].summary)} protocol"), path, dpi=110)
    return True


def protocol_outputs(run: Path, results: list[StageResult], config: SweepConfig,
                     pool: np.ndarray | None = None) -> list[Path]:
    """protocols.csv, protocols.png and (images, given the pool) the d1/d2 grids of each
    K's final state; returns the figures. Nothing without measure.compare."""
    states = pairs(results)
    if config.measure.compare is None or not states:
        return []
    with atomic_file(run / PROTOCOLS_CSV) as tmp:
        write_protocols(tmp, states)
    finals = pairs(results, snapshots=False)
    protocols_figure(run / "protocols.png", finals)
    figures = [run / "protocols.png"]
    if pool is not None and pool.ndim == 4:
        for state in finals:
            path = run / f"protocols-spurious-K{state.K}.png"
            if breakdown_grid(path, state, pool, config):
                figures.append(path)
    return figures


def protocol_plan(run: Path, eval_key: str, synth_key: str, heldout: np.ndarray,
                  config: SweepConfig) -> list[tuple[str, Path]]:
    """--dry-run: the compare stage of one state, (what, its cache folder); [] without
    measure.compare."""
    measure = compared_measure(config)
    if measure is None:
        return []
    key = classify_key(eval_key, synth_key, heldout, replace(config, measure=measure))
    return [(f"compare ({measure.protocol})", run / "cache" / f"classify-{key}")]
