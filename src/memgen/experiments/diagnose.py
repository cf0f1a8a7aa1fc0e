"""``memgen diagnose``'s output folder, from the measurement of ``memgen.probes.diagnose``.

diagnose.csv: one row per noise level, the columns of ``memgen.probes.diagnose.COLUMNS``
(floats as %.6g); diagnose.json: the run's record (``diagnose_record``) and the same rows
(NaN as null); diagnose.png: the three RMS curves with their 95% intervals.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

import numpy as np

from memgen.io import write_json
from memgen.probes.diagnose import COLUMNS, DenoiserError, DiagnoseConfig
from memgen.report.figures import plot_denoiser_error, save_figure

FILES = ("diagnose.csv", "diagnose.json", "diagnose.png")


def diagnose_record(config: DiagnoseConfig, sigmas: np.ndarray, sources: dict,
                    train_name: str, train: np.ndarray, schedule) -> dict:
    """What diagnose.json says besides the levels: the config with the σ used, the model
    source given (flag → path), the training set's name, size and sample shape, and the
    model's schedule (its class and fields)."""
    return {"config": {**dataclasses.asdict(config), "sigmas": sigmas.tolist()},
            "source": {k: v for k, v in sources.items() if v}, "train": train_name,
            "K": len(train), "shape": list(train.shape[1:]),
            "schedule": {"kind": type(schedule).__name__, **dataclasses.asdict(schedule)}}


def write_diagnose(folder: Path, result: DenoiserError, payload: dict) -> None:
    """diagnose.csv, diagnose.json (``payload`` and the levels) and diagnose.png into an
    existing folder."""
    rows = result.as_rows()
    with (folder / "diagnose.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in r.items()}
                         for r in rows)
    json_rows = [{k: None if isinstance(v, float) and math.isnan(v) else v
                  for k, v in r.items()} for r in rows]
    write_json(folder / "diagnose.json", {**payload, "levels": json_rows})
    curves = {"model vs exact denoiser": (result.rms, result.rms_lo, result.rms_hi),
              "model vs clean y": (result.rms_model_vs_clean, result.rms_model_vs_clean_lo,
                                   result.rms_model_vs_clean_hi),
              "exact denoiser vs clean y": (result.rms_exact_vs_clean,
                                            result.rms_exact_vs_clean_lo,
                                            result.rms_exact_vs_clean_hi)}
    title = f"denoiser error, K = {payload['K']} ({result.n_per_level} queries per level)"
    save_figure(plot_denoiser_error(result.sigma, curves, title), folder / "diagnose.png")
