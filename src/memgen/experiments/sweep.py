"""Sweeps over the training-set size K: every K's stages by an executor, then the aggregate.

``run_sweep`` checks the run folder, runs :func:`memgen.experiments.stages.run_K` for every K
(here, in worker processes or as Ray tasks: ``memgen.experiments.executors``) and writes,
across K, ``fractions.csv``, ``capacities.json``, the time-axis files, the figures and
``report.html``. ``plan`` says, for ``--dry-run``, which stages are cached or would run
and why. The orchestration holds no math.
"""

from __future__ import annotations

import csv
import json
import re
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from memgen.diffusion.sources import model_source
from memgen.diffusion.training import snapshot_path
from memgen.experiments.cache import fingerprint, is_done
from memgen.experiments.config import SweepConfig, as_dict, check_device
from memgen.experiments.census_stage import CensusTable, census_outputs, census_plan
from memgen.experiments.executors import execute
from memgen.experiments.probe_stages import analysis_figures, analysis_key, landscape_figure
from memgen.experiments.protocol_outputs import protocol_outputs, protocol_plan
from memgen.experiments.stages import (StageResult, classify_key, generate_key, load_pool, run_K,
                                       run_K_task, split, state_file, train_config, train_key,
                                       validate_against_data)
from memgen.io import (MARKER, atomic_file, check_output_dir, claim_output_dir, csv_number,
                       load_samples, write_json, write_marker)
from memgen.metrics.capacity import (Capacities, FractionTable, capacities,
                                     read_fraction_table)
from memgen.metrics.rules import LABEL_NAMES
from memgen.metrics.timescale import MEMORIZED_HALF, fit_power_law, tau_mem_per_K
from memgen.provenance import file_record, gather
from memgen.report.figures import (plot_fractions, plot_neighbours, plot_phase_map,
                                   plot_sample_grid, plot_samples_2d, save_figure)
from memgen.report.html import write_report

@dataclass(frozen=True)
class SweepResult:
    """What a sweep measured, as its files hold it: the per-K classifications, fractions.csv
    (the cells as written, and the table the capacities were computed from), the
    capacities, the training-time axis and the run folder."""

    run: Path  # as given
    results: tuple[StageResult, ...]  # one per K, by K (each with its snapshots)
    table: FractionTable  # fractions.csv read back: its 6-significant-digit values
    rows: tuple[dict[str, str], ...]  # fractions.csv's cells (column → text), by K
    capacities: Capacities  # capacities.json's
    timescale: dict | None = None  # timescale.json's payload (train.snapshots), else None
    census: CensusTable | None = None  # census.csv's (analysis.census), else None


def write_fractions(path: Path, results: list[StageResult],
                    steps: bool = False) -> tuple[dict[str, str], ...]:
    """fractions.csv: K, the three fractions with _lo/_hi, n_eval and n_synth, the null
    rates with the null run's set sizes (smaller than n_eval/n_synth when held-out data ran
    short), and the sample quality vs held-out data (precision, recall, density, coverage,
    precision per label, the held-out baseline's precision and recall; empty where absent).

    steps: a ``steps`` column after K (the training steps of each row's state), one row
    per (K, steps) — fractions_steps.csv, the training-time axis.
    results: StageResults, or any rows with ``K``, ``summary`` (a classify summary.json)
    and ``steps`` — ``memgen.experiments.aggregate.Measured`` for ``memgen aggregate``.
    Every real number is written with CSV_DIGITS significant digits (:func:`csv_number`).
    Returns the rows as written (column → cell text, as ``csv.DictReader`` reads them)."""
    quality = ("precision", "recall", "density", "coverage")
    columns = ["K"] + ["steps"] * steps
    columns += [f"{n}{suffix}" for n in LABEL_NAMES for suffix in ("", "_lo", "_hi")]
    columns += ["n_eval", "n_synth"] + [f"null_{n}" for n in LABEL_NAMES]
    columns += ["null_n_eval", "null_n_synth"]
    columns += [*quality, *(f"precision_{n}" for n in LABEL_NAMES), "baseline_precision",
                "baseline_recall"]
    written = []
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for r in sorted(results, key=lambda r: (r.K, r.steps or 0)):
            s = r.summary
            row = [r.K] + [csv_number(r.steps)] * steps
            for name in LABEL_NAMES:
                row += [csv_number(v) for v in (s["fractions"][name], *s["ci95"][name])]
            null = s.get("null") or {}
            row += [s["n_eval"], s.get("n_synth", "")]
            row += [csv_number(null.get("fractions", {}).get(name)) for name in LABEL_NAMES]
            row += [null.get("n_eval", ""), null.get("n_synth", "")]
            q = s.get("quality") or {}
            by_label, base = q.get("precision_by_label") or {}, q.get("baseline") or {}
            row += [csv_number(q.get(name)) for name in quality]
            row += [csv_number(by_label.get(name)) for name in LABEL_NAMES]
            row += [csv_number(base.get("precision")), csv_number(base.get("recall"))]
            row = [str(cell) for cell in row]  # as csv.writer writes them
            writer.writerow(row)
            written.append(dict(zip(columns, row)))
    return tuple(written)


def evidence_figures(run: Path, pool: np.ndarray, results: list[StageResult],
                     config: SweepConfig) -> list[Path]:
    """Samples per label: a 2D scatter for every K, or for images the neighbour grids and
    sample grids of the smallest, a middle and the largest K."""
    results = sorted(results, key=lambda r: r.K)
    figures = []

    def save(fig, name):
        save_figure(fig, run / name, dpi=110)
        figures.append(run / name)

    if pool.ndim == 2 and pool.shape[1] == 2:
        panels = [{"K": r.K, "train": split(pool, r.K, config)[0],
                   "samples": load_samples(r.eval_path, own=True), "labels": _labels(r)["labels"]}
                  for r in results]
        save(plot_samples_2d(panels), "samples.png")
        return figures
    if pool.ndim != 4:
        return figures
    for r in {results[0].K: results[0], results[len(results) // 2].K: results[len(results) // 2],
              results[-1].K: results[-1]}.values():
        found, samples = _labels(r), load_samples(r.eval_path, own=True)
        chosen = {name: list(map(int, np.flatnonzero(found["labels"] == code)[:2]))
                  for code, name in enumerate(LABEL_NAMES)}
        if any(chosen.values()):
            synth = load_samples(r.synth_path, own=True)
            save(plot_neighbours(samples, split(pool, r.K, config)[0], synth,
                                 found["train_idx"], found["synth_idx"], found["labels"], chosen,
                                 found["train_dist"], found["synth_dist"], title=f"K = {r.K}"),
                 f"neighbours-K{r.K}.png")
        save(plot_sample_grid(samples[:64], found["labels"][:64], title=f"K = {r.K}"),
             f"samples-K{r.K}.png")
    return figures


def _labels(result: StageResult) -> dict:
    with np.load(result.folder / "labels.npz", allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def aggregate(run: Path, results: list[StageResult], config: SweepConfig,
              pool: np.ndarray | None = None, provenance: dict | None = None) -> SweepResult:
    """fractions.csv with its provenance.json, capacities.json, the figures and
    report.html; returns what they hold. provenance: ``memgen.provenance.gather``'s
    record (default: this process's command line and versions, no inputs).

    The capacities are computed from fractions.csv as written (read back: its values with
    CSV_DIGITS significant digits), so that ``memgen capacities RUN/fractions.csv``
    reproduces capacities.json exactly."""
    provenance = gather() if provenance is None else provenance
    for stale in run.iterdir():  # an earlier run's time axis or figures, made no more
        if stale.is_file() and AGGREGATE_OUTPUTS.fullmatch(stale.name):
            stale.unlink()
    with atomic_file(run / "fractions.csv") as tmp:
        rows = write_fractions(tmp, results)
    with atomic_file(run / "provenance.json") as tmp:
        write_json(tmp, provenance)
    table = read_fraction_table(run / "fractions.csv")
    caps = capacities(table, config.measure.epsilon, config.measure.bootstrap,
                      config.measure.seed)
    payload = caps.as_dict()  # with ε; MC and GC only where the samples are on the data
    with atomic_file(run / "capacities.json") as tmp:
        write_json(tmp, payload)
    null = np.array([[r.summary.get("null", {}).get("fractions", {}).get(n, np.nan)
                      for n in LABEL_NAMES] for r in sorted(results, key=lambda r: r.K)])
    fig = plot_fractions(table.K, table.fractions, table.lo, table.hi,
                         {n: c.value for n, c in caps.items()}, null=null, title=config.name)
    save_figure(fig, run / "fractions.png", dpi=150)
    figures = [run / "fractions.png"]
    if pool is not None:
        figures += evidence_figures(run, pool, results, config)

    figures += landscape_figure(run, results, config) + analysis_figures(run, results, config)
    figures += protocol_outputs(run, results, config, pool)
    census, census_figures = census_outputs(run, results, config.name)
    figures += census_figures
    timescale = None
    if config.train.snapshots and model_source(config.model).trains:
        states = [state for r in results for state in (*r.snapshots, r)]
        with atomic_file(run / "fractions_steps.csv") as tmp:
            write_fractions(tmp, states, steps=True)
        timescale = write_time_axis(run, states, config.name)
        figures.append(run / "phase_map.png")

    with atomic_file(run / "report.html") as tmp:
        write_report(tmp, config.name, as_dict(config), payload, results, figures,
                     timescale=timescale, provenance=provenance)
    return SweepResult(run, tuple(sorted(results, key=lambda r: r.K)), table, rows, caps,
                       timescale, census)


def write_time_axis(run: Path, states: list[StageResult], title: str) -> dict:
    """timescale.json and phase_map.png from every (K, steps) state: the K × steps map of
    the three fractions, τ_mem(K) (first step count with memorized ≥ ½) and the fit
    log τ_mem = log A + b log K where at least three K reach it."""
    Ks = sorted({r.K for r in states})
    steps = sorted({r.steps for r in states})
    grid = np.full((len(Ks), len(steps), 3), np.nan)
    for r in states:
        grid[Ks.index(r.K), steps.index(r.steps)] = [r.summary["fractions"][n]
                                                     for n in LABEL_NAMES]
    tau = tau_mem_per_K(steps, grid[:, :, 0], MEMORIZED_HALF)
    censored = [K for K, t in zip(Ks, tau) if t == steps[0]]  # τ ≤ the first snapshot
    payload = {"Ks": Ks, "steps": steps, "threshold": MEMORIZED_HALF,
               "tau_mem": dict(zip(map(str, Ks), tau)), "tau_mem_censored": censored}
    try:  # censored τ are bounds, not values: the fit leaves them out
        payload["fit"] = fit_power_law(Ks, [None if K in censored else t
                                            for K, t in zip(Ks, tau)]).as_dict()
    except ValueError as err:
        payload["fit"] = None
        payload["fit_note"] = str(err)
    with atomic_file(run / "timescale.json") as tmp:
        write_json(tmp, payload)
    save_figure(plot_phase_map(Ks, steps, grid, tau=tau, title=title), run / "phase_map.png",
                dpi=130)
    return payload


def run_sweep(config: SweepConfig, run: Path, progress: bool = True,
              overwrite: bool = False, *, config_file: str | Path | None = None,
              argv: list[str] | None = None, log=None) -> SweepResult:
    """Every K (here, in worker processes or as Ray tasks), then the aggregate: its
    :class:`SweepResult`.

    ``run`` must be new, empty or a sweep's folder (resumed); ``overwrite`` empties
    another command's folder first (``memgen.io.claim_output_dir``). config_file and
    argv (default ``sys.argv``) are recorded in provenance.json, with the data pool's
    content fingerprint; log(line), if given, receives which stages ran (with their wall
    times) and which were cached."""
    check_sweep_dir(run, overwrite)
    check_device(config.device)
    pool = load_pool(config)
    validate_against_data(config, pool)
    if config.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    inputs = {"config": file_record(config_file)} if config_file is not None else {}
    provenance = gather({**inputs, "data": _pool_record(config, pool)}, argv)
    if _is_legacy_sweep(run):
        write_marker(run, "sweep")  # adopt it: it was a sweep's folder all along
    claim_output_dir(run, "sweep", overwrite)
    (run / "config.json").write_text(json.dumps(as_dict(config), indent=2))
    before, t0 = done_markers(run), time.perf_counter()
    results = execute(partial(run_K_task, config, str(run.resolve())), config.Ks,
                      config.executor, progress=progress,
                      here=lambda K: run_K(run, pool, K, config, progress=progress))
    for line in (stage_log(results, before) if log else []):
        log(line)
    t1 = time.perf_counter()
    result = aggregate(run, results, config, pool, provenance)
    if log:
        log(f"stages {t1 - t0:.1f} s, aggregate (tables, figures, report) "
            f"{time.perf_counter() - t1:.1f} s")
    return result


def _pool_record(config: SweepConfig, pool: np.ndarray) -> dict:
    """The data pool as the stages read it (resized to the model): its name and root, and
    the content fingerprint of ``memgen.experiments.cache`` (sha256 of shape, dtype and
    bytes, 16 hex digits) with its shape."""
    return {"name": config.data.name, "root": config.data.root,
            "fingerprint": fingerprint(pool), "shape": list(pool.shape)}


def done_markers(run: Path) -> dict[str, int]:
    """Each finished stage folder of a run → its DONE.json's mtime (ns): taken before a
    run, it tells which stages the run did (a new or rewritten marker)."""
    return {p.parent.name: p.stat().st_mtime_ns for p in (run / "cache").glob("*/DONE.json")}


def stage_log(results: list[StageResult], before: dict[str, int]) -> list[str]:
    """Per K and saved state, each stage: "ran 1.2 s", or "cached" (done before the run)."""
    def status(folder: Path) -> str:
        done = folder / "DONE.json"
        if not done.exists():
            return "not done"
        seconds = json.loads(done.read_text()).get("seconds", 0.0)
        ran = before.get(folder.name) != done.stat().st_mtime_ns
        return f"ran {seconds:.1f} s" if ran else "cached"

    lines = []
    for r in sorted(results, key=lambda r: r.K):
        for state in (*r.snapshots, r):
            where = f"K={r.K}" + ("" if state.steps is None else f" after {state.steps} steps")
            lines.append(f"{where}: " + ", ".join(f"{name} {status(folder)}" for name, folder
                                                  in state.stage_folders().items()))
    return lines


def check_sweep_dir(run: Path, overwrite: bool = False) -> None:
    """UserError unless ``run`` may hold this sweep: new, empty, a sweep's folder (resumed,
    also one of a memgen version that did not mark its folders), or anything with
    ``overwrite`` (``memgen.io.check_output_dir``)."""
    if not _is_legacy_sweep(run):
        check_output_dir(run, "sweep", overwrite, replaced=overwrite)


STAGE_FOLDER = re.compile(r"(train|eval|synth|classify|analysis|landscape|endpoints|census)"
                          r"-[0-9a-f]{16}")
# what the aggregate writes (all of it again on every run): figures, tables, time axis, report
AGGREGATE_OUTPUTS = re.compile(r"(fractions_steps\.csv|timescale\.json|capacities\.json|"
                               r"report\.html|.*\.png|protocols\.csv|census(_spurious)?\.csv)")
SWEEP_OUTPUTS = re.compile(r"(cache|config\.json|fractions(_steps)?\.csv|capacities\.json|"
                           r"timescale\.json|provenance\.json|report\.html|.*\.png|.*\.csv)")


def _is_legacy_sweep(run: Path) -> bool:
    """A sweep folder of a memgen version that did not mark its folders: nothing in it but
    a sweep's outputs, a cache of stage folders only, and a config.json that is a sweep's
    (anything else is not adopted: it may be another project's folder)."""
    if (run / MARKER).exists() or not (run / "cache").is_dir():
        return False
    try:
        config = json.loads((run / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(config, dict) and {"Ks", "model", "sample", "measure"} <= set(config)
            and all(SWEEP_OUTPUTS.fullmatch(p.name) for p in run.iterdir())
            and all(STAGE_FOLDER.fullmatch(p.name) for p in (run / "cache").iterdir()))


def plan(config: SweepConfig, run: Path) -> list[str]:
    """What a run would do (--dry-run): per K and saved state, each stage (train,
    eval, synth, classify, analysis) cached or to run, and why."""
    pool = load_pool(config)
    validate_against_data(config, pool)
    s = config.sample
    lines = []
    for K in sorted(config.Ks):
        train, heldout = split(pool, K, config)
        t_key = train_key(train, config)
        if not model_source(config.model).trains:
            what = model_source(config.model).untrained(config.model, K)
            lines.append(f"K={K}: train — ({what} needs no training)")
            states = [(None, state_file(config, K, None, None))]
        else:
            folder = run / "cache" / f"train-{t_key}"
            steps = train_config(config).saved_steps
            missing = [n for n in steps if not snapshot_path(folder, n).exists()]
            why = ("cached" if not missing else "to run (no run with these settings)"
                   if not folder.exists() else f"to run (resumes; states after {missing} "
                   "steps missing)")
            lines.append(f"K={K}: train {why}; measured after {list(steps)} steps")
            states = [(n, snapshot_path(folder, n)) for n in steps]
        for steps_done, checkpoint in states:
            where = "" if steps_done is None else f" after {steps_done} steps"
            keys = {}
            for which, n, seed in (("eval", s.n_eval, s.eval_seed),
                                   ("synth", max(s.synth_multiplier * K, s.min_synth),
                                    s.synth_seed)):
                keys[which] = generate_key(which, n, seed, t_key, checkpoint, config)
                lines.append(f"  {which}{where}: {_state(run / 'cache' / f'{which}-{keys[which]}')}"
                             f" ({n} samples)")
            c_key = classify_key(keys["eval"], keys["synth"], heldout, config)
            lines.append(f"  classify{where}: {_state(run / 'cache' / f'classify-{c_key}')}")
            lines += [f"  {what}{where}: {_state(folder)}" for what, folder in
                      protocol_plan(run, keys["eval"], keys["synth"], heldout, config)]
            a_key = analysis_key(f"classify-{c_key}", config)
            if a_key is not None and steps_done == states[-1][0]:
                lines.append(f"  analysis{where}: {_state(run / 'cache' / f'analysis-{a_key}')}")
        last = states[-1]
        lines += [f"  {name}{'' if last[0] is None else f' after {last[0]} steps'}: "
                  f"{_state(folder)}" for name, folder in
                  census_plan(run, t_key, last[1], heldout, config).items()]
    return lines


def _state(folder: Path) -> str:
    if is_done(folder):
        return "cached"
    return "to run (resumes an interrupted run)" if folder.exists() else "to run (new settings)"
