"""The authors' released files, rescored by both protocols (``memgen rescore``).

Their layouts (github Lemon-cmd/Diffusion-Models-and-Associative-Memory), one file per
training-set size, named ``K.npz``:

    generated set   key ``samples``: (N, C, H, W) in [-1, 1]
    distance file   ``run_distances.py``'s output: ``data-dists``, ``data-indices`` (N, k):
                    the k nearest training images of each generated sample, ascending;
                    ``synth-dists``, ``synth-indices`` (N, k): its k nearest in the same
                    set, itself left out (k = 5 by default)

From a distance file alone (LPIPS: squared units, as memgen's ``lpips-*-ref``):
  * the reference protocol exactly (d1 = data-dists[:, 0], s1 = synth-dists[:, 0]);
  * eqs. 4–6 with S′ = the same set leave-one-out (d1/d2 from data-dists, s1 from
    synth-dists) — NOT the paper protocol's independent S′ with |S′| ≫ K, which needs a
    second generated set;
  * the d1/d2 breakdown of the spurious samples.
Not from a distance file: null rates and calibration (held-out data), --dedup and sample
quality (the images), other metrics, and anything from the pixel-ℓ2 path's files, which
hold 1/(‖x − y‖ + 1e-8) of the k FARTHEST samples (memgen.metrics.protocols).
From a generated set with its training split, everything is recomputed by memgen's exact
kNN in any metric.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memgen.errors import UserError
from memgen.metrics.classify import ClassifyConfig, classify_sets
from memgen.metrics.protocols import REFERENCE_PROTOCOL, copy_breakdown
from memgen.metrics.rules import LABEL_NAMES, PAPER, apply_rule, label_counts, make_rule

DISTANCE_KEYS = ("data-dists", "synth-dists", "data-indices", "synth-indices")
SAMPLES_KEY = "samples"


@dataclass(frozen=True)
class Rescored:
    """Both protocols' label counts for one K's set, and the reference protocol's spurious
    samples by d1/d2 (``metrics.protocols.copy_breakdown``)."""

    K: int
    source: str  # "distances" or "samples"
    n: int
    reference: dict[str, int]  # label name -> count: the reference protocol
    paper: dict[str, int]  # eqs. 4-6 (δ = 1/3) with S′ = the same set, leave-one-out
    breakdown: dict
    delta_m: float
    delta_s: float

    def row(self) -> dict:
        """One CSV row: fractions of both protocols and the breakdown's counts."""
        row = {"K": self.K, "source": self.source, "n": self.n,
               "delta_m": self.delta_m, "delta_s": self.delta_s}
        for prefix, counts in (("reference", self.reference), ("paper_same_set", self.paper)):
            row.update({f"{prefix}_{name}": counts[name] / self.n for name in LABEL_NAMES})
        row.update({f"spurious_{name}": count
                    for name, count in self.breakdown["counts"].items()})
        return row


def size_of(path: Path) -> int:
    """K of a released file: its name, ``K.npz`` (their ``sort_files`` convention)."""
    try:
        return int(path.name.split(".")[0])
    except ValueError:
        raise UserError(f"{path}: the released files are named K.npz (K the training-set "
                        "size)") from None


def released_files(path: str | Path) -> dict[int, Path]:
    """K -> file of a released ``K.npz`` file or a folder of them, by K."""
    path = Path(path)
    files = sorted(path.glob("*.npz")) if path.is_dir() else [path]
    if not files or not files[0].exists():
        raise UserError(f"{path}: no K.npz files there")
    return dict(sorted((size_of(f), f) for f in files))


def read_distances(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(data-dists, synth-dists) of one distance file, float64 (N, k), checked."""
    with np.load(path) as z:
        missing = [key for key in DISTANCE_KEYS if key not in z.files]
        if missing:
            raise UserError(f"{path}: not a distance file of run_distances.py (missing "
                            f"{', '.join(missing)})")
        d, s = (np.asarray(z[key], dtype=np.float64) for key in DISTANCE_KEYS[:2])
    if d.ndim != 2 or s.ndim != 2 or len(d) != len(s) or d.shape[1] < 2 or s.shape[1] < 1:
        raise UserError(f"{path}: data-dists {d.shape} and synth-dists {s.shape} must be "
                        "(N, k) for the same N, with k ≥ 2 training neighbours")
    if (np.diff(d, axis=1) < 0).any() or (np.diff(s, axis=1) < 0).any():
        raise UserError(f"{path}: distances are not ascending along each row")
    return d, s


def rescore(K: int, source: str, train_dist: np.ndarray, synth_dist: np.ndarray,
            delta_m: float | None = None, delta_s: float | None = None) -> Rescored:
    """Both protocols on one set's (n, k) ascending training distances and its (n, k)
    leave-one-out distances within itself (the metric's units): the reference protocol
    at absolute cutoffs (None: the README's LPIPS-AlexNet 0.03 / 0.02) and eqs. 4–6 at
    the paper's 1/3."""
    reference_rule = make_rule(REFERENCE_PROTOCOL.rule, delta_m, delta_s)
    labels = apply_rule(train_dist, synth_dist, reference_rule)
    paper = apply_rule(train_dist, synth_dist, make_rule(PAPER.name))
    return Rescored(K=K, source=source, n=len(labels),
                    reference=dict(zip(LABEL_NAMES, map(int, label_counts(labels)))),
                    paper=dict(zip(LABEL_NAMES, map(int, label_counts(paper)))),
                    breakdown=copy_breakdown(train_dist, labels),
                    delta_m=reference_rule.delta_m, delta_s=reference_rule.delta_s)


def rescore_distance_file(path: Path, delta_m=None, delta_s=None) -> Rescored:
    """Both protocols from one of their distance files."""
    d, s = read_distances(path)
    return rescore(size_of(path), "distances", d, s, delta_m, delta_s)


def rescore_samples(K: int, samples: np.ndarray, train: np.ndarray, metric: str,
                    delta_m=None, delta_s=None) -> Rescored:
    """Both protocols from a generated set and its training split: the reference protocol's
    neighbours by memgen's exact kNN (``classify_sets``), eqs. 4–6 on the same ones."""
    result = classify_sets(samples, train, None, config=ClassifyConfig(
        protocol=REFERENCE_PROTOCOL.name, metric=metric, delta_m=delta_m, delta_s=delta_s))
    near = result.neighbours
    return rescore(K, "samples", near.train_dist, near.synth_dist, result.rule.delta_m,
                   result.rule.delta_s)
