"""The README's main job: classify planted sets built from real Fashion-MNIST.

Every evaluated sample is planted with a known answer, so the printed fractions can
be checked against the truth:
    memorized    a training image plus small pixel noise
    spurious     a pixel blend of 2–3 training images; the same blend recurs (with
                 fresh noise) across the synthetic set, like a spurious attractor
    generalized  a held-out test image that appears nowhere else
The synthetic set mixes the same three kinds, and the remaining test images serve
as the held-out data of the null run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from memgen.data import DEFAULT_SPLIT_SEED, load_idx_images, nested_indices
from memgen.errors import UserError
from memgen.io import atomic_output_dir, write_json
from memgen.metrics.classify import ClassifyConfig, classify_sets, summary, write_classification
from memgen.metrics.rules import GENERALIZED, LABEL_NAMES, MEMORIZED, SPURIOUS
from memgen.metrics.stats import label_confusion
from memgen.report.figures import plot_label_bars, plot_neighbours, save_figure


@dataclass(frozen=True)
class DemoConfig:
    K: int = 1000  # training-set size (first K of the seeded permutation)
    n_eval: int = 1000
    synth_multiplier: int = 4  # |S'| = 4K, the paper's choice for (Fashion-)MNIST
    shares: tuple[float, float, float] = (0.3, 0.3, 0.4)  # planted memorized/spurious/novel
    n_blends: int = 100  # distinct spurious attractors
    noise: float = 0.03  # pixel noise std, in [-1, 1] units
    seed: int = 0
    split_seed: int = DEFAULT_SPLIT_SEED


@dataclass(frozen=True)
class PlantedSets:
    train: np.ndarray  # (K, C, H, W)
    eval: np.ndarray  # (n_eval, C, H, W)
    synth: np.ndarray  # (synth_multiplier·K, C, H, W)
    heldout: np.ndarray  # real images used by neither eval nor synth
    truth: np.ndarray  # (n_eval,) int8 planted labels


def plant_sets(train: np.ndarray, test: np.ndarray, config: DemoConfig) -> PlantedSets:
    """Build evaluated and synthetic sets with known labels from real train/test images."""
    rng = np.random.default_rng(config.seed)
    n_synth = config.synth_multiplier * len(train)
    n_mem, n_spur = (int(round(s * config.n_eval)) for s in config.shares[:2])
    n_new = config.n_eval - n_mem - n_spur
    s_mem, s_spur = (int(round(s * n_synth)) for s in config.shares[:2])
    s_new = n_synth - s_mem - s_spur
    if n_new + s_new > len(test):
        raise UserError(f"the demo needs {n_new + s_new} test images, found {len(test)}")
    blends = _blends(train, config.n_blends, rng)
    order = rng.permutation(len(test))
    noisy = lambda x: np.clip(x + config.noise * rng.standard_normal(x.shape), -1, 1)  # noqa: E731
    eval_set = np.concatenate([
        noisy(train[rng.integers(len(train), size=n_mem)]),
        noisy(blends[rng.integers(len(blends), size=n_spur)]),
        test[order[:n_new]]])
    synth = np.concatenate([
        noisy(train[rng.integers(len(train), size=s_mem)]),
        noisy(blends[rng.integers(len(blends), size=s_spur)]),
        test[order[n_new:n_new + s_new]]])
    truth = np.repeat(np.array([MEMORIZED, SPURIOUS, GENERALIZED], dtype=np.int8),
                      [n_mem, n_spur, n_new])
    return PlantedSets(train=train, eval=eval_set.astype(np.float32),
                       synth=synth[rng.permutation(n_synth)].astype(np.float32),
                       heldout=test[order[n_new + s_new:]], truth=truth)


def _blends(train: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n convex pixel blends of 2 or 3 distinct training images (Dirichlet(5) weights)."""
    out = np.empty((n, *train.shape[1:]), dtype=np.float64)
    for i in range(n):
        parts = rng.choice(len(train), size=rng.integers(2, 4), replace=False)
        weights = rng.dirichlet(np.full(len(parts), 5.0))
        out[i] = np.tensordot(weights, train[parts], axes=1)
    return out


@dataclass(frozen=True)
class DemoResult:
    summary: dict  # the summary.json payload
    confusion: np.ndarray  # (3, 3) planted × detected
    confusion_text: str


def run_demo(config: DemoConfig, data_root: str | None, out, progress: bool = False,
             overwrite: bool = False) -> DemoResult:
    """Plant, classify (with null rates from held-out images), write results and figures."""
    train_all = load_idx_images("fashion-mnist", "train", data_root).images
    test = load_idx_images("fashion-mnist", "test", data_root).images
    train = train_all[nested_indices(len(train_all), config.K, config.split_seed)]
    sets = plant_sets(train, test, config)
    result = classify_sets(sets.eval, sets.train, sets.synth, sets.heldout,
                          ClassifyConfig(seed=config.seed), progress=progress)
    matrix = label_confusion(sets.truth, result.labels)  # rows planted, columns detected
    payload = summary(result)
    near = result.neighbours
    with atomic_output_dir(out, "demo", overwrite) as tmp:
        write_classification(tmp, result)
        write_json(tmp / "demo.json", {"config": asdict(config),
                                       "confusion_planted_by_detected": matrix.tolist()})
        est = result.estimate
        null = result.null.estimate
        groups = {"detected": (est.fractions, est.lo, est.hi),
                  "planted": (np.bincount(sets.truth, minlength=3) / len(sets.truth), None, None),
                  "null rate (held-out)": (null.fractions, null.lo, null.hi)}
        save_figure(plot_label_bars(groups, title=f"Fashion-MNIST planted sets, K = {config.K}"),
                    tmp / "fractions.png", 150)
        save_figure(plot_neighbours(sets.eval, sets.train, sets.synth, near.train_idx,
                                    near.synth_idx, result.labels,
                                    _examples(sets.truth, result.labels), near.train_dist,
                                    near.synth_dist), tmp / "neighbours.png", 110)
    return DemoResult(payload, matrix, _confusion_text(matrix))


def _examples(truth: np.ndarray, labels: np.ndarray) -> dict:
    """Two correctly detected samples per label, for the neighbour grid."""
    return {name: np.flatnonzero((truth == code) & (labels == code))[:2].tolist()
            for code, name in enumerate(LABEL_NAMES)}


def _confusion_text(matrix: np.ndarray) -> str:
    lines = ["planted \\ detected " + "".join(f"{n:>13}" for n in LABEL_NAMES)]
    lines += [f"{name:<19}" + "".join(f"{c:>13d}" for c in row)
              for name, row in zip(LABEL_NAMES, matrix)]
    accuracy = np.trace(matrix) / matrix.sum()
    return "\n".join(lines + [f"agreement with the planted labels: {accuracy:.1%}"])
