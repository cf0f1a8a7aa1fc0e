"""Sweeps over the training-set size K: config → cached stages → fractions and capacities.

Per K: split → train (skipped for the exact denoiser) → generate S_eval and S′
(separately seeded) → classify (with null rates from held-out real data). Every stage
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

from memgen.config import SweepConfig, as_dict
from memgen.metrics.classify import LABEL_NAMES

STAGE_VERSION = 1  # bump when a stage's output format changes


@dataclass(frozen=True)
class StageResult:
    """One K's classification, as read back from its summary.json, and where its sets are."""

    K: int
    summary: dict
    folder: Path  # the classify stage: summary.json, labels.npz
    eval_path: Path
    synth_path: Path
    train_folder: Path | None = None
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


def _done(folder: Path) -> bool:
    return (folder / "DONE.json").exists()


def _mark_done(folder: Path, payload: dict) -> None:
    tmp = folder / "DONE.json.tmp"
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, folder / "DONE.json")


def _atomic_npz(path: Path, samples: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, samples=samples)
    os.replace(tmp, path)


# ------------------------------------------------------------------------ data


def split_seed(config: SweepConfig) -> int:
    if config.data.split_seed is not None:
        return config.data.split_seed
    return 42 if config.data.name == "circle" else 3407


def load_pool(config: SweepConfig) -> np.ndarray:
    """The training pool, resized to the model's image size."""
    from memgen.data import load_dataset, resize_images
    from memgen.nets import get_preset

    pool = load_dataset(config.data.name, "train", config.data.root)
    if config.model.kind == "network" and pool.ndim == 4:
        pool = resize_images(pool, get_preset(config.model.preset).image_size)
    return pool


def validate_against_data(config: SweepConfig, pool: np.ndarray) -> None:
    """K must leave room in the pool and the metric's weights must exist; fail before any
    work rather than after hours of training."""
    from memgen.metrics.features import get_feature_map

    too_big = [K for K in config.Ks if K >= len(pool)]
    if too_big:
        raise ValueError(f"Ks: {too_big} not below the {len(pool)} samples of "
                         f"data.name = {config.data.name}")
    try:
        get_feature_map(config.measure.metric)  # LPIPS: loads its weights or says which
    except ValueError as err:
        raise ValueError(f"measure.metric: {err}") from None


def split(pool: np.ndarray, K: int, config: SweepConfig) -> tuple[np.ndarray, np.ndarray]:
    """(S_K, held-out rest) from one seeded permutation: S_K ⊂ S_2K."""
    from memgen.data import train_heldout

    parts = train_heldout(pool, K, split_seed(config))
    return parts.train, parts.heldout


# ---------------------------------------------------------------------- stages


def train_stage(run: Path, train: np.ndarray, K: int, config: SweepConfig,
                progress: bool) -> tuple[str, Path | None]:
    """Train (network models) or nothing (exact denoiser); returns (key, folder)."""
    key = train_key(K, config)
    if config.model.kind == "exact":
        return key, None
    from memgen.training import train as run_training

    folder = run / "cache" / f"train-{key}"
    if not _done(folder):
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        run_training(train_config(config), torch.from_numpy(train).to(config.device), folder,
                     progress=progress)
        _mark_done(folder, {"K": K, "stage": "train", "seconds": time.perf_counter() - t0})
    return key, folder


def train_key(K: int, config: SweepConfig) -> str:
    """The train stage's key: the data, K, the model and (for networks) the training."""
    return stage_key("train", as_dict(config.data), K, as_dict(config.model),
                     as_dict(config.train) if config.model.kind == "network" else None)


def train_config(config: SweepConfig):
    from memgen.nets import get_preset
    from memgen.training import TrainConfig

    kind = get_preset(config.model.preset).kind
    objective = config.model.objective or ("ve_score" if kind == "mlp" else "vp_eps")
    t = config.train
    return TrainConfig(preset=config.model.preset, objective=objective,
                       iterations=t.iterations, batch_size=t.batch_size,
                       fixed_batch=t.fixed_batch, lr=t.lr,
                       ema_decay=t.ema_decay, grad_clip=t.grad_clip, seed=t.seed, amp=t.amp,
                       checkpoint_every=max(1, t.iterations // 4))


def generate_stage(run: Path, which: str, n: int, seed: int, train_key: str,
                   train_folder: Path | None, train: np.ndarray, config: SweepConfig,
                   progress: bool) -> tuple[str, Path]:
    """Sample S_eval or S′; returns (key, path of the merged npz)."""
    from memgen.generate import GenerateConfig, generate

    key = stage_key("generate", train_key, which, n, seed, as_dict(config.sample))
    folder = run / "cache" / f"{which}-{key}"
    path = folder / f"{which}.npz"
    if not _done(folder):
        t0 = time.perf_counter()
        denoiser, schedule = _denoiser(train_folder, train, config)
        s = config.sample
        default = "ddpm" if type(schedule).__name__ == "VPSchedule" else "euler_maruyama"
        gen = GenerateConfig(n=n, sampler=s.sampler or default, steps=s.steps, eta=s.eta,
                             seed=seed, batch_size=s.batch_size, shard_size=max(n // 4, 256),
                             name=which, clip=train.ndim == 4, final_denoise=s.final_denoise)
        generate(denoiser, train.shape[1:], schedule, gen, folder, device=config.device,
                 progress=progress)
        _mark_done(folder, {"stage": which, "n": n, "seed": seed,
                            "seconds": time.perf_counter() - t0})
    return key, path


def _denoiser(train_folder: Path | None, train: np.ndarray, config: SweepConfig):
    from memgen.denoisers import EmpiricalDenoiser, load_checkpoint_denoiser
    from memgen.schedules import VESchedule, VPSchedule

    if train_folder is None:
        schedule = VPSchedule() if config.model.schedule == "vp" else VESchedule()
        return EmpiricalDenoiser(torch.from_numpy(train).to(config.device)), schedule
    den = load_checkpoint_denoiser(train_folder / "checkpoint.pt", device=config.device)
    return den, den.schedule


def classify_stage(run: Path, K: int, train: np.ndarray, heldout: np.ndarray,
                   eval_key: str, eval_path: Path, synth_key: str, synth_path: Path,
                   config: SweepConfig) -> StageResult:
    """Classify S_eval against S_K and S′ (null rates from held-out real data)."""
    from memgen.audit import ClassifyConfig, classify_sets, write_audit
    from memgen.io import load_samples

    m = config.measure
    key = stage_key("classify", eval_key, synth_key, as_dict(m), split_seed(config))
    folder = run / "cache" / f"classify-{key}"
    if not _done(folder):
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        audit = classify_sets(
            load_samples(eval_path, "eval"), train, load_samples(synth_path, "synth"), heldout,
            ClassifyConfig(rule=m.rule, delta_m=m.delta_m, delta_s=m.delta_s, metric=m.metric,
                           k=m.k, alpha=m.alpha, n_resamples=m.bootstrap, seed=m.seed))
        write_audit(folder, audit)
        _mark_done(folder, {"K": K, "stage": "classify", "seconds": time.perf_counter() - t0})
    summary = json.loads((folder / "summary.json").read_text())
    return StageResult(K, summary, folder, eval_path, synth_path)


def run_K(run: Path, pool: np.ndarray, K: int, config: SweepConfig,
          progress: bool = False) -> StageResult:
    """All stages for one training-set size."""
    train, heldout = split(pool, K, config)
    t_key, train_folder = train_stage(run, train, K, config, progress)
    s = config.sample
    n_synth = max(s.synth_multiplier * K, s.min_synth)
    eval_key, eval_path = generate_stage(run, "eval", s.n_eval, s.eval_seed, t_key,
                                         train_folder, train, config, progress)
    synth_key, synth_path = generate_stage(run, "synth", n_synth, s.synth_seed, t_key,
                                           train_folder, train, config, progress)
    result = classify_stage(run, K, train, heldout, eval_key, eval_path, synth_key, synth_path,
                            config)
    from memgen.analysis import analysis_stage, landscape_stage

    result = replace(result, train_folder=train_folder)
    return replace(result, analysis_folder=analysis_stage(run, result, train, config),
                   landscape_folder=landscape_stage(run, result, train, config))


# ------------------------------------------------------------------ across K


def write_fractions(path: Path, results: list[StageResult]) -> None:
    """fractions.csv: K, the three fractions with _lo/_hi, n_eval, and the null rates."""
    columns = ["K"] + [f"{n}{suffix}" for n in LABEL_NAMES for suffix in ("", "_lo", "_hi")]
    columns += ["n_eval"] + [f"null_{n}" for n in LABEL_NAMES]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for r in sorted(results, key=lambda r: r.K):
            s = r.summary
            row = [r.K]
            for name in LABEL_NAMES:
                row += [s["fractions"][name], *s["ci95"][name]]
            null = s.get("null", {}).get("fractions", {})
            row += [s["n_eval"]] + [null.get(name, "") for name in LABEL_NAMES]
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
    from memgen.report.html import write_report

    with atomic_file(run / "report.html") as tmp:
        write_report(tmp, config.name, as_dict(config), payload, results, figures)
    return payload


def run_sweep(config: SweepConfig, run: Path, progress: bool = True) -> dict:
    """Every K (here, in worker processes or as Ray tasks), then the aggregate."""
    from memgen.executors import execute

    pool = load_pool(config)
    validate_against_data(config, pool)
    if config.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(json.dumps(as_dict(config), indent=2))
    return aggregate(run, execute(config, run, pool, progress), config, pool)


def plan(config: SweepConfig, run: Path) -> list[str]:
    """What a run would do: one line per stage, 'cached' or 'to run' (for --dry-run)."""
    pool = load_pool(config)
    validate_against_data(config, pool)
    lines = []
    for K in sorted(config.Ks):
        folder = run / "cache" / f"train-{train_key(K, config)}"
        state = "exact denoiser" if config.model.kind == "exact" else (
            "cached" if _done(folder) else "to run")
        lines.append(f"K={K}: train {state}")
    return lines

