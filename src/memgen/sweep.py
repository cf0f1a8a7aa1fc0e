"""Sweeps over the training-set size K: config → cached stages → fractions and capacities.

Per K: split → train (skipped for the exact denoiser) → generate S_eval and S′
(separately seeded) → classify (with null rates from held-out real data); with
``train.snapshots``, generate and classify also run on the states the one training run kept
after those step counts (the training-time axis, never retraining). Every stage
writes into ``RUN/cache/<stage>-<key>/``, where the key hashes the config slice the stage
reads and the keys of its inputs, and marks completion with an atomically written
``DONE.json``; a stage whose folder is done is skipped. So a killed sweep resumes where it
stopped (training resumes from its checkpoint, generation from its shards), and changing a
setting recomputes only the stages that read it. Across K: ``fractions.csv``,
``capacities.json`` and the figures. The orchestration holds no math.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from memgen.config import SweepConfig, as_dict, check_device, network
from memgen.errors import UserError
from memgen.metrics.classify import LABEL_NAMES
from memgen.training import snapshot_path

STAGE_VERSION = 3  # bump when a stage's output format or key changes


@dataclass(frozen=True)
class StageResult:
    """One K's classification, as read back from its summary.json, and where its sets are."""

    K: int
    summary: dict
    folder: Path  # the classify stage: summary.json, labels.npz
    eval_path: Path
    synth_path: Path
    train_folder: Path | None = None
    checkpoint: Path | None = None  # the state that made the sets (None: exact denoiser)
    steps: int | None = None  # its training steps
    snapshots: tuple["StageResult", ...] = ()  # the same K after fewer steps (ascending)
    analysis_folder: Path | None = None
    landscape_folder: Path | None = None

    def seconds(self) -> dict[str, float]:
        """Wall time of each stage that ran (cached stages keep their first timing)."""
        folders = {"train": self.train_folder, "eval": self.eval_path.parent,
                   "synth": self.synth_path.parent, "classify": self.folder,
                   "analysis": self.analysis_folder, "landscape": self.landscape_folder}
        out = {}
        for name, folder in folders.items():
            if folder is not None and (folder / "DONE.json").exists():
                out[name] = json.loads((folder / "DONE.json").read_text()).get("seconds", 0.0)
        return out


def stage_key(name: str, *parts) -> str:
    """Hash of a stage's name, its config slice and its inputs' keys."""
    text = json.dumps([name, STAGE_VERSION, *parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fingerprint(array: np.ndarray) -> str:
    """Hash of an array's content (shape, dtype, bytes): a data set's identity in the
    keys, wherever it was read from."""
    digest = hashlib.sha256(f"{array.shape}{array.dtype}".encode())
    digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()[:16]


def _done(folder: Path) -> bool:
    return (folder / "DONE.json").exists()


def _mark_done(folder: Path, payload: dict) -> None:
    tmp = folder / "DONE.json.tmp"
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, folder / "DONE.json")


# ------------------------------------------------------------------------ data


def split_seed(config: SweepConfig) -> int:
    if config.data.split_seed is not None:
        return config.data.split_seed
    return 42 if config.data.name == "circle" else 3407


def load_pool(config: SweepConfig) -> np.ndarray:
    """The training pool, resized to the model's image size."""
    from memgen.data import load_dataset, resize_images

    pool = load_dataset(config.data.name, "train", config.data.root)
    if config.model.kind == "network" and pool.ndim == 4:
        pool = resize_images(pool, network(config.model).image_size)
    return pool


def validate_against_data(config: SweepConfig, pool: np.ndarray) -> None:
    """K must leave room in the pool and the metric's weights must exist; fail before any
    work rather than after hours of training."""
    from memgen.metrics.features import get_feature_map

    too_big = [K for K in config.Ks if K >= len(pool)]
    if too_big:
        raise UserError(f"Ks: {too_big} not below the {len(pool)} samples of "
                         f"data.name = {config.data.name}")
    try:
        get_feature_map(config.measure.metric)  # LPIPS: loads its weights or says which
    except ValueError as err:
        raise UserError(f"measure.metric: {err}") from None


def split(pool: np.ndarray, K: int, config: SweepConfig) -> tuple[np.ndarray, np.ndarray]:
    """(S_K, held-out rest) from one seeded permutation: S_K ⊂ S_2K."""
    from memgen.data import train_heldout

    parts = train_heldout(pool, K, split_seed(config))
    return parts.train, parts.heldout


# ---------------------------------------------------------------------- stages


def train_stage(run: Path, train: np.ndarray, K: int, config: SweepConfig,
                progress: bool) -> tuple[str, Path | None]:
    """Train (network models) or nothing (exact denoiser); returns (key, folder).

    One folder per trajectory: a longer budget or a new snapshot resumes the run there.
    """
    key = train_key(train, config)
    if config.model.kind == "exact":
        return key, None
    from memgen.training import train as run_training

    folder = run / "cache" / f"train-{key}"
    wanted = train_config(config)
    if not all(snapshot_path(folder, n).exists() for n in wanted.saved_steps):
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        run_training(wanted, torch.from_numpy(train).to(config.device), folder,
                     progress=progress)
        _mark_done(folder, {"K": K, "stage": "train", "steps": wanted.iterations,
                            "seconds": time.perf_counter() - t0})
    return key, folder


def train_key(train: np.ndarray, config: SweepConfig) -> str:
    """The train stage's key: the training set's content (not where it was read from),
    the model with its full network and (for networks) what decides the trajectory — not
    the budget (iterations, snapshots)."""
    trajectory = None
    if config.model.kind == "network":
        # not the budget (iterations, snapshots), nor ema_warmup at its default
        trajectory = {k: v for k, v in as_dict(config.train).items()
                      if k not in ("iterations", "snapshots")
                      and not (k == "ema_warmup" and v)}
        trajectory["network"] = network(config.model).to_dict()
    return stage_key("train", fingerprint(train), as_dict(config.model), trajectory)


# the measure settings that only the aggregate reads (capacities), not the labels
AGGREGATE_FIELDS = ("epsilon", "bootstrap")


def train_config(config: SweepConfig):
    from memgen.training import TrainConfig

    net = network(config.model)
    objective = config.model.objective or ("ve_score" if net.kind == "mlp" else "vp_eps")
    t = config.train
    return TrainConfig(preset=config.model.preset or "custom", network=net.to_dict(),
                       objective=objective, iterations=t.iterations, snapshots=t.snapshots,
                       batch_size=t.batch_size, fixed_batch=t.fixed_batch, lr=t.lr,
                       ema_decay=t.ema_decay, ema_warmup=t.ema_warmup, grad_clip=t.grad_clip,
                       seed=t.seed, amp=t.amp,
                       checkpoint_every=max(1, t.iterations // 4))


# the sample settings that change a sample (not batch_size, n_eval or the S′ size); the
# later ones default to None (today's behaviour) and are then left out of the key
SAMPLING_FIELDS = ("sampler", "steps", "eta", "final_denoise", "stop_sigma", "prior",
                   "clip_denoised", "clip_range")


def generate_stage(run: Path, which: str, n: int, seed: int, train_key: str,
                   checkpoint: Path | None, train: np.ndarray, config: SweepConfig,
                   progress: bool) -> tuple[str, Path]:
    """Sample S_eval or S′ from a saved state (or the exact denoiser); returns (key, path
    of the merged npz)."""
    from memgen.generate import GenerateConfig, generate

    key = generate_key(which, n, seed, train_key, checkpoint, config)
    folder = run / "cache" / f"{which}-{key}"
    path = folder / f"{which}.npz"
    if not _done(folder):
        t0 = time.perf_counter()
        denoiser, schedule = _denoiser(checkpoint, train, config)
        s = config.sample
        default = "ddpm" if type(schedule).__name__ == "VPSchedule" else "euler_maruyama"
        gen = GenerateConfig(n=n, sampler=s.sampler or default, steps=s.steps, eta=s.eta,
                             seed=seed, batch_size=s.batch_size, shard_size=max(n // 4, 256),
                             name=which, clip=train.ndim == 4, final_denoise=s.final_denoise,
                             stop_sigma=s.stop_sigma, prior=s.prior or "standard",
                             clip_denoised=s.clip_denoised,
                             clip_range=s.clip_range or (-1.0, 1.0))
        generate(denoiser, train.shape[1:], schedule, gen, folder, data=train,
                 device=config.device, progress=progress)
        _mark_done(folder, {"stage": which, "n": n, "seed": seed,
                            "seconds": time.perf_counter() - t0})
    return key, path


def generate_key(which: str, n: int, seed: int, train_key: str, checkpoint: Path | None,
                 config: SweepConfig) -> str:
    """The generate stage's key: the model state and the settings that change a sample."""
    # options left unset are left out, so a new option keeps the keys of existing caches
    sampling = {name: getattr(config.sample, name) for name in SAMPLING_FIELDS
                if getattr(config.sample, name) is not None}
    state = None if checkpoint is None else checkpoint.name
    return stage_key("generate", train_key, state, which, n, seed, sampling)


def _denoiser(checkpoint: Path | None, train: np.ndarray, config: SweepConfig):
    from memgen.denoisers import EmpiricalDenoiser, load_checkpoint_denoiser
    from memgen.schedules import VESchedule, VPSchedule

    if checkpoint is None:
        schedule = VPSchedule() if config.model.schedule == "vp" else VESchedule()
        return EmpiricalDenoiser(torch.from_numpy(train).to(config.device)), schedule
    den = load_checkpoint_denoiser(checkpoint, device=config.device)
    return den, den.schedule


def classify_stage(run: Path, K: int, train: np.ndarray, heldout: np.ndarray,
                   eval_key: str, eval_path: Path, synth_key: str, synth_path: Path,
                   config: SweepConfig) -> StageResult:
    """Classify S_eval against S_K and S′ (null rates from held-out real data)."""
    from memgen.audit import ClassifyConfig, classify_sets, write_audit
    from memgen.io import load_samples

    m = config.measure
    folder = run / "cache" / f"classify-{classify_key(eval_key, synth_key, heldout, config)}"
    if not _done(folder):
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        audit = classify_sets(
            load_samples(eval_path, "eval"), train, load_samples(synth_path, "synth"), heldout,
            ClassifyConfig(rule=m.rule, delta_m=m.delta_m, delta_s=m.delta_s, metric=m.metric,
                           k=m.k, alpha=m.alpha, seed=m.seed, dedup=m.dedup))
        write_audit(folder, audit)
        _mark_done(folder, {"K": K, "stage": "classify", "seconds": time.perf_counter() - t0})
    summary = json.loads((folder / "summary.json").read_text())
    return StageResult(K, summary, folder, eval_path, synth_path)


def classify_key(eval_key: str, synth_key: str, heldout: np.ndarray,
                 config: SweepConfig) -> str:
    """The classify stage's key: its two sets, the held-out data's content and the measure
    settings that change a label (not those only the capacities read)."""
    reads = {k: v for k, v in as_dict(config.measure).items() if k not in AGGREGATE_FIELDS}
    return stage_key("classify", eval_key, synth_key, reads, fingerprint(heldout))


def run_K(run: Path, pool: np.ndarray, K: int, config: SweepConfig,
          progress: bool = False) -> StageResult:
    """All stages for one training-set size: the final state, with its snapshots."""
    train, heldout = split(pool, K, config)
    t_key, train_folder = train_stage(run, train, K, config, progress)
    steps = [None] if train_folder is None else train_config(config).saved_steps
    measured = [measure_state(run, K, train, heldout, t_key, train_folder, n, config, progress)
                for n in steps]
    result = replace(measured[-1], snapshots=tuple(measured[:-1]))
    from memgen.analysis import analysis_stage, landscape_stage

    return replace(result, analysis_folder=analysis_stage(run, result, train, config),
                   landscape_folder=landscape_stage(run, result, train, config))


def measure_state(run: Path, K: int, train: np.ndarray, heldout: np.ndarray, t_key: str,
                  train_folder: Path | None, steps: int | None, config: SweepConfig,
                  progress: bool = False) -> StageResult:
    """S_eval and S′ from one saved state (after ``steps`` steps), classified."""
    checkpoint = None if train_folder is None else snapshot_path(train_folder, steps)
    s = config.sample
    n_synth = max(s.synth_multiplier * K, s.min_synth)
    eval_key, eval_path = generate_stage(run, "eval", s.n_eval, s.eval_seed, t_key,
                                         checkpoint, train, config, progress)
    synth_key, synth_path = generate_stage(run, "synth", n_synth, s.synth_seed, t_key,
                                           checkpoint, train, config, progress)
    result = classify_stage(run, K, train, heldout, eval_key, eval_path, synth_key, synth_path,
                            config)
    return replace(result, train_folder=train_folder, checkpoint=checkpoint, steps=steps)


# ------------------------------------------------------------------ across K


def write_fractions(path: Path, results: list[StageResult], steps: bool = False) -> None:
    """fractions.csv: K, the three fractions with _lo/_hi, n_eval and n_synth, the null
    rates with the null run's set sizes (smaller than n_eval/n_synth when held-out data ran
    short), and the sample quality vs held-out data (precision, recall, density, coverage, precision per
    label, the held-out baseline's precision and recall; empty where absent).

    steps: a ``steps`` column after K (the training steps of each row's state), one row
    per (K, steps) — fractions_steps.csv, the training-time axis."""
    quality = ("precision", "recall", "density", "coverage")
    columns = ["K"] + ["steps"] * steps
    columns += [f"{n}{suffix}" for n in LABEL_NAMES for suffix in ("", "_lo", "_hi")]
    columns += ["n_eval", "n_synth"] + [f"null_{n}" for n in LABEL_NAMES]
    columns += ["null_n_eval", "null_n_synth"]
    columns += [*quality, *(f"precision_{n}" for n in LABEL_NAMES), "baseline_precision",
                "baseline_recall"]
    cell = lambda value: "" if value is None else value  # noqa: E731
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for r in sorted(results, key=lambda r: (r.K, r.steps or 0)):
            s = r.summary
            row = [r.K] + [cell(r.steps)] * steps
            for name in LABEL_NAMES:
                row += [s["fractions"][name], *s["ci95"][name]]
            null = s.get("null") or {}
            row += [s["n_eval"], s.get("n_synth", "")]
            row += [null.get("fractions", {}).get(name, "") for name in LABEL_NAMES]
            row += [null.get("n_eval", ""), null.get("n_synth", "")]
            q = s.get("quality") or {}
            by_label, base = q.get("precision_by_label") or {}, q.get("baseline") or {}
            row += [cell(q.get(name)) for name in quality]
            row += [cell(by_label.get(name)) for name in LABEL_NAMES]
            row += [cell(base.get("precision")), cell(base.get("recall"))]
            writer.writerow(row)


def evidence_figures(run: Path, pool: np.ndarray, results: list[StageResult],
                     config: SweepConfig) -> list[Path]:
    """Samples per label: a 2D scatter for every K, or for images the neighbour grids and
    sample grids of the smallest, a middle and the largest K."""
    from memgen.io import load_samples
    from memgen.report.figures import (plot_neighbours, plot_sample_grid, plot_samples_2d,
                                       save_figure)

    results = sorted(results, key=lambda r: r.K)
    figures = []

    def save(fig, name):
        save_figure(fig, run / name, dpi=110)
        figures.append(run / name)

    if pool.ndim == 2 and pool.shape[1] == 2:
        panels = [{"K": r.K, "train": split(pool, r.K, config)[0],
                   "samples": load_samples(r.eval_path), "labels": _labels(r)["labels"]}
                  for r in results]
        save(plot_samples_2d(panels), "samples.png")
        return figures
    if pool.ndim != 4:
        return figures
    for r in {results[0].K: results[0], results[len(results) // 2].K: results[len(results) // 2],
              results[-1].K: results[-1]}.values():
        found, samples = _labels(r), load_samples(r.eval_path)
        chosen = {name: list(map(int, np.flatnonzero(found["labels"] == code)[:2]))
                  for code, name in enumerate(LABEL_NAMES)}
        if any(chosen.values()):
            save(plot_neighbours(samples, split(pool, r.K, config)[0], load_samples(r.synth_path),
                                 found["train_idx"], found["synth_idx"], found["labels"], chosen,
                                 found["train_dist"], found["synth_dist"]), f"neighbours-K{r.K}.png")
        save(plot_sample_grid(samples[:64], found["labels"][:64], title=f"K = {r.K}"),
             f"samples-K{r.K}.png")
    return figures


def _labels(result: StageResult) -> dict:
    with np.load(result.folder / "labels.npz", allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def aggregate(run: Path, results: list[StageResult], config: SweepConfig,
              pool: np.ndarray | None = None) -> dict:
    """fractions.csv, capacities.json, the figures and report.html; returns the capacities."""
    from memgen.io import atomic_file, write_json
    from memgen.metrics.capacity import capacities, read_fraction_table
    from memgen.report.figures import plot_fractions, save_figure

    with atomic_file(run / "fractions.csv") as tmp:
        write_fractions(tmp, results)
    table = read_fraction_table(run / "fractions.csv")
    caps = capacities(table, config.measure.epsilon, config.measure.bootstrap,
                      config.measure.seed)
    payload = {name: c.as_dict() for name, c in caps.items()}
    payload["epsilon"] = config.measure.epsilon
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
    from memgen.analysis import analysis_figures, landscape_figure

    figures += landscape_figure(run, results, config) + analysis_figures(run, results, config)
    timescale = None
    if config.train.snapshots and config.model.kind == "network":
        states = [state for r in results for state in (*r.snapshots, r)]
        with atomic_file(run / "fractions_steps.csv") as tmp:
            write_fractions(tmp, states, steps=True)
        timescale = write_time_axis(run, states, config.name)
        figures.append(run / "phase_map.png")
    from memgen.report.html import write_report

    with atomic_file(run / "report.html") as tmp:
        write_report(tmp, config.name, as_dict(config), payload, results, figures,
                     timescale=timescale)
    return payload


def write_time_axis(run: Path, states: list[StageResult], title: str) -> dict:
    """timescale.json and phase_map.png from every (K, steps) state: the K × steps map of
    the three fractions, τ_mem(K) (first step count with memorized ≥ ½) and the fit
    log τ_mem = log A + b log K where at least three K reach it."""
    from memgen.io import atomic_file, write_json
    from memgen.metrics.timescale import MEMORIZED_HALF, fit_power_law, tau_mem_per_K
    from memgen.report.figures import plot_phase_map, save_figure

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
              overwrite: bool = False) -> dict:
    """Every K (here, in worker processes or as Ray tasks), then the aggregate.

    ``run`` must be new, empty or a sweep's folder (resumed); ``overwrite`` empties
    another command's folder first (``memgen.io.claim_output_dir``)."""
    from memgen.executors import execute
    from memgen.io import check_output_dir, claim_output_dir

    if not _is_legacy_sweep(run):
        check_output_dir(run, "sweep", overwrite)
    check_device(config.device)
    pool = load_pool(config)
    validate_against_data(config, pool)
    if config.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    claim_output_dir(run, "sweep", overwrite and not _is_legacy_sweep(run))
    (run / "config.json").write_text(json.dumps(as_dict(config), indent=2))
    return aggregate(run, execute(config, run, pool, progress), config, pool)


def _is_legacy_sweep(run: Path) -> bool:
    """A sweep folder of a memgen version that did not mark its folders."""
    from memgen.io import MARKER

    return ((run / "cache").is_dir() and (run / "config.json").is_file()
            and not (run / MARKER).exists())


def plan(config: SweepConfig, run: Path) -> list[str]:
    """What a run would do (--dry-run): per K and saved state, each stage (train,
    eval, synth, classify, analysis) cached or to run, and why."""
    from memgen.analysis import analysis_key

    pool = load_pool(config)
    validate_against_data(config, pool)
    s = config.sample
    lines = []
    for K in sorted(config.Ks):
        train, heldout = split(pool, K, config)
        t_key = train_key(train, config)
        if config.model.kind == "exact":
            lines.append(f"K={K}: train — (the exact denoiser needs no training)")
            states = [(None, None)]
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
            a_key = analysis_key(f"classify-{c_key}", config)
            if a_key is not None and steps_done == states[-1][0]:
                lines.append(f"  analysis{where}: {_state(run / 'cache' / f'analysis-{a_key}')}")
    return lines


def _state(folder: Path) -> str:
    if _done(folder):
        return "cached"
    return "to run (resumes an interrupted run)" if folder.exists() else "to run (new settings)"
