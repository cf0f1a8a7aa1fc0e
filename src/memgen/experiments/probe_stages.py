"""Attractor analyses inside a sweep: basin size and curvature per label and K.

After a K's classification, ``analysis_stage`` takes up to ``analysis.per_label`` evaluated
samples of each label (the first ones, in sample order) and measures, with the model of
that K (``memgen.probes.recovery``, ``memgen.probes.curvature``):

- the critical noise level σ* — the largest σ from which the sample is recovered with
  probability ≥ p (basin size);
- the smallest Hessian eigenvalues of E_σ = −log p_σ at the sample (dense in low
  dimension, Lanczos on Hessian-vector products for images).

Cached like every stage (``RUN/cache/analysis-<key>/analysis.npz``); ``analysis_figures``
draws the distributions per label across K for the report. For 2D data and trained
models, ``landscape_stage`` also computes the learned energy landscape of a few K (the
PF-ODE likelihood, ``memgen.experiments.landscape.learned_row``) beside the exact one.
"""

from __future__ import annotations

import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from memgen.diffusion.loaders import load_denoiser
from memgen.experiments.cache import is_done, key_fields, mark_done, stage_key
from memgen.experiments.config import AnalysisConfig, SweepConfig
from memgen.experiments.landscape import learned_row, write_learned
from memgen.io import atomic_file
from memgen.metrics.rules import LABEL_NAMES
from memgen.probes.curvature import hessian_eigsh, hessian_spectrum
from memgen.probes.recovery import RecoveryConfig, critical_time
from memgen.report.figures import plot_by_label, save_figure

DENSE_MAX = 256  # coordinates up to which the Hessian spectrum is computed densely
# the analysis settings that only the landscape stage reads (landscape, landscape_Ks: which
# K it runs at; landscape_sigma, landscape_resolution: its key)
LANDSCAPE_FIELDS = tuple(f.name for f in fields(AnalysisConfig)
                         if f.name.startswith("landscape"))
# the settings of the census stages (memgen.experiments.census_stage: their own keys)
CENSUS_FIELDS = tuple(f.name for f in fields(AnalysisConfig) if f.name.startswith("census"))


def pick_per_label(labels: np.ndarray, per_label: int) -> np.ndarray:
    """Indices of the first ``per_label`` samples of each label, sorted: (≤ 3·per_label,)."""
    picks = [np.flatnonzero(labels == code)[:per_label] for code in range(len(LABEL_NAMES))]
    return np.sort(np.concatenate(picks))


def analysis_key(classify_folder: str, config: SweepConfig) -> str | None:
    """The analysis stage's key (None when no analysis is enabled): the classify stage it
    reads (its sets, hence the model state) and every analysis setting but the landscape's
    and the census's (LANDSCAPE_FIELDS, CENSUS_FIELDS)."""
    a = config.analysis
    if not (a.basins or a.curvature):
        return None
    reads = key_fields(AnalysisConfig, a, LANDSCAPE_FIELDS + CENSUS_FIELDS)
    return stage_key("analysis", classify_folder, reads)


def analysis_stage(run: Path, result, train: np.ndarray, config: SweepConfig) -> Path | None:
    """Run the enabled analyses for one K (a classify StageResult); returns the folder."""
    a = config.analysis
    key = analysis_key(result.folder.name, config)
    if key is None:
        return None
    folder = run / "cache" / f"analysis-{key}"

    def compute() -> dict:
        with np.load(result.folder / "labels.npz", allow_pickle=False) as archive:
            labels = archive["labels"]
        idx = pick_per_label(labels, a.per_label)
        with np.load(result.eval_path, allow_pickle=False) as archive:
            x = torch.from_numpy(archive["samples"][idx]).to(config.device)
        den, schedule = _model(result.checkpoint, train, config)
        out = {"index": idx, "label": labels[idx]}
        if a.basins:
            out.update(_basins(den, schedule, x, config))
        if a.curvature:
            out["eigenvalues"] = _curvature(den, x, config)
        return out

    return _cached(folder / "analysis.npz", result.K, "analysis", compute)


def _cached(path: Path, K: int, stage: str, compute) -> Path:
    """A stage that writes one npz: skipped when done, else timed, written atomically and
    marked done (the same contract as the stages of ``memgen.experiments.stages``)."""
    folder = path.parent
    if not is_done(folder):
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        arrays = compute()
        with atomic_file(path) as tmp:
            np.savez(tmp, **arrays)
        mark_done(folder, {"K": K, "stage": stage, "seconds": time.perf_counter() - t0})
    return folder


def _model(checkpoint: Path | None, train: np.ndarray, config: SweepConfig):
    """(denoiser, schedule or None): the state's own field, unclipped (curvature needs the
    model's own score), or the exact denoiser of S_K in float32 without a schedule."""
    if checkpoint is None:
        model = load_denoiser(exact=train, device=config.device)
    else:
        model = load_denoiser(checkpoint=checkpoint, device=config.device, clip=False)
    return model.denoiser, model.schedule


def _basins(den, schedule, x: torch.Tensor, config: SweepConfig) -> dict:
    a = config.analysis
    hi = a.sigma_hi or (10.0 if schedule is None else min(10.0, float(schedule.sigmas()[0])))
    recovery = RecoveryConfig(n_trials=a.n_trials, p=a.p, delta=a.delta, steps=a.steps,
                              rel_min=a.rel_min)
    ct = critical_time(den, x, a.sigma_lo, hi, recovery, schedule=schedule, chunk=2048)
    return {"sigma": ct.sigma.numpy(), "sigma_upper": ct.sigma_upper.numpy(),
            "radius": ct.radius.numpy(), "censored": ct.censored.numpy()}


def _curvature(den, x: torch.Tensor, config: SweepConfig) -> np.ndarray:
    """(n, n_eigen) smallest eigenvalues of ∇²E_σ, ascending."""
    a = config.analysis
    if x[0].numel() <= DENSE_MAX:
        return hessian_spectrum(den, x, a.curvature_sigma).eigenvalues.numpy()[:, :a.n_eigen]
    return hessian_eigsh(den, x, a.curvature_sigma, n_eigen=a.n_eigen,
                         which="SA").eigenvalues.numpy()


def analysis_figures(run: Path, results, config: SweepConfig) -> list[Path]:
    """critical.png and curvature.png: distributions per label, one group per K."""
    loaded = {}
    for r in sorted(results, key=lambda r: r.K):
        if r.analysis_folder is not None:
            with np.load(r.analysis_folder / "analysis.npz", allow_pickle=False) as archive:
                loaded[r.K] = {key: archive[key] for key in archive.files}
    a, figures = config.analysis, []
    plots = [("sigma", "critical.png", "critical σ* (basin size)", True,
              f"basins: largest σ recovered with p ≥ {a.p} (δ = {a.delta})"),
             ("eigenvalues", "curvature.png", "λ_min(∇²E_σ) · σ²", False,
              f"curvature at the samples, σ = {a.curvature_sigma}")]
    for key, name, ylabel, log, title in plots:
        panels = {f"K = {K}": {label: _column(d, key, a)[d["label"] == code]
                               for code, label in enumerate(LABEL_NAMES)}
                  for K, d in loaded.items() if key in d}
        if panels:
            save_figure(plot_by_label(panels, ylabel=ylabel, title=title, log=log), run / name)
            figures.append(run / name)
    return figures


def _column(data: dict, key: str, a) -> np.ndarray:
    """σ* as is; the smallest eigenvalue in units of 1/σ² (1: an isolated memory)."""
    if key == "eigenvalues":
        return data[key][:, 0] * a.curvature_sigma**2
    return data[key]


def landscape_stage(run: Path, result, train: np.ndarray, config: SweepConfig) -> Path | None:
    """The learned vs exact landscape of this K (2D trained models, K in landscape_Ks)."""
    a = config.analysis
    if (not a.landscape or result.checkpoint is None or train.ndim != 2
            or train.shape[1] != 2 or result.K not in a.landscape_Ks):
        return None
    key = stage_key("landscape", result.train_folder.name, result.eval_path.parent.name,
                    {"landscape_sigma": a.landscape_sigma,
                     "landscape_resolution": a.landscape_resolution})

    def compute() -> dict:
        den = load_denoiser(checkpoint=result.checkpoint, device=config.device).denoiser
        with np.load(result.eval_path, allow_pickle=False) as archive:
            samples = archive["samples"]
        return learned_row(den, train, samples, K=result.K, sigma=a.landscape_sigma,
                           resolution=a.landscape_resolution)

    return _cached(run / "cache" / f"landscape-{key}" / "landscape.npz", result.K, "landscape",
                   compute)


def landscape_figure(run: Path, results, config: SweepConfig) -> list[Path]:
    """learned_landscape.png and learned_attractors.csv from the cached landscape stages."""
    rows = []
    for r in sorted(results, key=lambda r: r.K):
        if r.landscape_folder is not None:
            with np.load(r.landscape_folder / "landscape.npz", allow_pickle=False) as archive:
                rows.append({key: archive[key] for key in archive.files})
    if not rows:
        return []
    write_learned(run, rows, config.analysis.landscape_sigma)
    return [run / "learned_landscape.png"]
