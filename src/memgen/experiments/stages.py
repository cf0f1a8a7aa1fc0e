"""The stages of one K: split → train → generate S_eval and S′ → classify (→ probes).

Per K: the first K of one seeded permutation is S_K, the rest held out; training is
skipped for the exact denoiser and for the authors' checkpoints (``model.kind =
checkpoints``: ``<K>.pt`` of ``model.path``, on their own subset ``data.split =
reference``, sampled as they did: 1000-step ancestral DDPM from the EMA weights, with
S_eval and S′ also written in their layout under ``RUN/reference/``); S_eval and S′ are
generated separately seeded; the classification has null rates from held-out real data.
With ``train.snapshots``, generate and classify also run on the states that the one
training run kept after those step counts (the training-time axis, never retraining). Each stage is cached
(``memgen.experiments.cache``); :func:`run_K_task` is the picklable task an executor runs.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from memgen.data import default_split_seed, load_dataset, resize_images, train_heldout
from memgen.diffusion.generate import GenerateConfig, Sampling, discard_unrecorded, generate
from memgen.diffusion.samplers import sampler_spec
from memgen.diffusion.sources import keyed_by_sources, model_source, objective
from memgen.diffusion.training import (TrainConfig, TrainSettings, check_fits, snapshot_path,
                                       train as run_training)
from memgen.errors import UserError
from memgen.experiments.cache import (file_fingerprint, fingerprint, is_done, key_fields,
                                      mark_done, stage_key)
from memgen.experiments.config import (SweepConfig, as_dict, check_checkpoint_files,
                                       compared_measure, network, split_rule)
from memgen.experiments.census_stage import census_stage
from memgen.experiments.probe_stages import analysis_stage, landscape_stage
from memgen.io import load_samples, write_reference_layout
from memgen.metrics.classify import (ClassifyConfig, classify_sets, summary,
                                     write_classification)
from memgen.metrics.features import check_available
from memgen.metrics.protocols import get_protocol


@dataclass(frozen=True)
class StageResult:
    """One K's classification (summary.json's payload, as computed or as cached) and where
    its sets are."""

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
    compared: "StageResult | None" = None  # the same sets by measure.compare's protocol
    endpoints_folder: Path | None = None  # the census's endpoints (analysis.census)
    census_folder: Path | None = None

    def stage_folders(self) -> dict[str, Path]:
        """The cache folder of each stage this state read (train: not for the exact
        denoiser; analysis, landscape, endpoints and census: when the config asks)."""
        folders = {"train": self.train_folder, "eval": self.eval_path.parent,
                   "synth": self.synth_path.parent, "classify": self.folder,
                   "analysis": self.analysis_folder, "landscape": self.landscape_folder,
                   "compare": self.compared and self.compared.folder,
                   "endpoints": self.endpoints_folder, "census": self.census_folder}
        return {name: folder for name, folder in folders.items() if folder is not None}

    def seconds(self) -> dict[str, float]:
        """Wall time of each stage that ran (cached stages keep their first timing)."""
        out = {}
        for name, folder in self.stage_folders().items():
            if (folder / "DONE.json").exists():
                out[name] = json.loads((folder / "DONE.json").read_text()).get("seconds", 0.0)
        return out


def split_seed(config: SweepConfig) -> int:
    if config.data.split_seed is not None:
        return config.data.split_seed
    return default_split_seed(config.data.name)


def load_pool(config: SweepConfig) -> np.ndarray:
    """The training pool, resized to the model's image size; UserError for a network that
    takes another kind of sample (vectors against images, other channels or dimension)."""
    pool = load_dataset(config.data.name, "train", config.data.root)
    if not model_source(config.model).trains:  # only a network is fitted to its data
        return pool
    net = network(config.model)
    try:
        check_fits(net, pool.shape[1:], resize=True, preset=config.model.preset)
    except UserError as err:
        raise UserError(f"data.name = {config.data.name}: {err}") from None
    return resize_images(pool, net.image_size) if pool.ndim == 4 else pool


def validate_against_data(config: SweepConfig, pool: np.ndarray) -> None:
    """K must leave room in the pool and the metric's weights must exist; fail before any
    work rather than after hours of training; the authors' checkpoints must all exist."""
    check_checkpoint_files(config)
    model_source(config.model).check_data(config.model, pool.shape[1:])
    too_big = [K for K in config.Ks if K >= len(pool)]
    if too_big:
        raise UserError(f"Ks: {too_big} not below the {len(pool)} samples of "
                         f"data.name = {config.data.name}")
    try:
        check_available(config.measure.metric)  # LPIPS: finds its weight files or says which
    except ValueError as err:
        raise UserError(f"measure.metric: {err}") from None
    if schedule_family(config) == "ve" and config.sample.steps == 1:
        raise UserError("sample.steps: a VE ladder needs at least 2 steps, got 1")


def split(pool: np.ndarray, K: int, config: SweepConfig) -> tuple[np.ndarray, np.ndarray]:
    """(S_K, held-out rest) from one seeded permutation (data.split's): S_K ⊂ S_2K."""
    parts = train_heldout(pool, K, split_seed(config), split_rule(config))
    return parts.train, parts.heldout


def train_stage(run: Path, train: np.ndarray, K: int, config: SweepConfig,
                progress: bool) -> tuple[str, Path | None]:
    """Train (network models) or nothing (exact denoiser, the authors' checkpoints); returns
    (key, folder).

    One folder per trajectory: a longer budget or a new snapshot resumes the run there.
    """
    key = train_key(train, config)
    if not model_source(config.model).trains:
        return key, None

    folder = run / "cache" / f"train-{key}"
    wanted = train_config(config)
    if not all(snapshot_path(folder, n).exists() for n in wanted.saved_steps):
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        run_training(wanted, torch.from_numpy(train).to(config.device), folder,
                     progress=progress)
        mark_done(folder, {"K": K, "stage": "train", "steps": wanted.iterations,
                            "seconds": time.perf_counter() - t0})
    return key, folder


# the train settings left out of the train key: the budget, which a longer run or a new
# snapshot resumes on the same trajectory (one folder per trajectory)
TRAIN_BUDGET = ("iterations", "snapshots")


def train_key(train: np.ndarray, config: SweepConfig) -> str:
    """The train stage's key: the training set's content (not where it was read from),
    the model with its full network and (for networks) every train setting but the budget
    (TRAIN_BUDGET); for the authors' checkpoints, the content of K.pt and of their YAML,
    if given."""
    training = key_fields(TrainSettings, config.train, TRAIN_BUDGET)
    trajectory = model_source(config.model).trajectory(config.model, len(train), training,
                                                       file_fingerprint)
    # the checkpoints' folder and YAML by content above, not by path; the training-free
    # sources' numbers there too (keyed_by_sources)
    model = {k: v for k, v in as_dict(config.model).items() if k not in keyed_by_sources()}
    return stage_key("train", fingerprint(train), model, trajectory)


# the classify settings left out of the classify key: the exact kNN engine's knobs. Both
# engines are exact and certified (memgen.neighbours: ties by the smaller index), and the
# budget only sets block sizes, so neither changes a neighbour, a label or a null rate
# (as sample.batch_size, which changes no sample; summary.json records their values).
CLASSIFY_UNKEYED = ("memory_budget", "backend")


def train_config(config: SweepConfig) -> TrainConfig:
    """The library's TrainConfig of a sweep: its train section (TrainConfig's own base), the
    model's network and objective."""
    net = network(config.model)
    return TrainConfig(**base_fields(TrainSettings, config.train),
                       preset=config.model.preset or "custom", network=net.to_dict(),
                       objective=objective(config.model),
                       checkpoint_every=max(1, config.train.iterations // 4))


def base_fields(base, section) -> dict:
    """name → value of the fields that dataclass ``section`` has from its base ``base``."""
    return {f.name: getattr(section, f.name) for f in fields(base)}


# the sampling setting left out of the generate key: the batch (sample i draws from its
# own stream keyed by (seed, i), so no sample depends on its batch); the set's size and
# seed are the key's own parts
SAMPLING_UNKEYED = ("batch_size",)


def sampling(config: SweepConfig) -> dict:
    """The Sampling fields the generate stage runs with: the sample section's, the sampler
    resolved (:func:`sampler_name`)."""
    return base_fields(Sampling, config.sample) | {"sampler": sampler_name(config)}


def generate_stage(run: Path, which: str, n: int, seed: int, train_key: str,
                   checkpoint: Path | None, train: np.ndarray, config: SweepConfig,
                   progress: bool) -> tuple[str, Path]:
    """Sample S_eval or S′ from a saved state (or the exact denoiser); returns (key, path
    of the merged npz)."""
    key = generate_key(which, n, seed, train_key, checkpoint, config)
    folder = run / "cache" / f"{which}-{key}"
    path = folder / f"{which}.npz"
    if not is_done(folder):
        t0 = time.perf_counter()
        denoiser, schedule = _denoiser(checkpoint, train, config)
        gen = GenerateConfig(**sampling(config), n=n, seed=seed, shard_size=max(n // 4, 256),
                             name=which, clip=train.ndim == 4)
        discard_unrecorded(folder, which)  # the key fixes the settings: redraw, not refuse
        generate(denoiser, train.shape[1:], schedule, gen, folder, data=train,
                 device=config.device, progress=progress)
        mark_done(folder, {"stage": which, "n": n, "seed": seed,
                            "seconds": time.perf_counter() - t0})
    return key, path


def generate_key(which: str, n: int, seed: int, train_key: str, checkpoint: Path | None,
                 config: SweepConfig) -> str:
    """The generate stage's key: the model state, the set's size and seed, and every
    Sampling field but the batch (SAMPLING_UNKEYED), with the sampler's revision (a sampler
    whose arithmetic changed draws other sets)."""
    settings = {k: v for k, v in sampling(config).items() if k not in SAMPLING_UNKEYED}
    revision = sampler_spec(settings["sampler"]).revision
    state = None if checkpoint is None else checkpoint.name
    return stage_key("generate", train_key, state, which, n, seed, settings, revision)


def sampler_name(config: SweepConfig) -> str:
    """The sampler the generate stage runs: sample.sampler, else the default of the model's
    schedule (VE: euler_maruyama, VP: ddpm; the authors' checkpoints are VP)."""
    if config.sample.sampler is not None:
        return config.sample.sampler
    return model_source(config.model).default_sampler(config.model)


def schedule_family(config: SweepConfig) -> str:
    """"ve" or "vp": the noise schedule of the sweep's model (the authors' checkpoints are
    VP; a network's follows its objective)."""
    return model_source(config.model).schedule_family(config.model)


def _denoiser(checkpoint: Path | None, train: np.ndarray, config: SweepConfig):
    """(denoiser, schedule): the saved state, or the exact denoiser of S_K (float32, the
    sweep's stored samples depend on it: ``memgen.diffusion.sources``)."""
    model = model_source(config.model).sweep_model(config.model, checkpoint, train,
                                                   config.device)
    return model.denoiser, model.schedule


def classify_stage(run: Path, K: int, train: np.ndarray, heldout: np.ndarray,
                   eval_key: str, eval_path: Path, synth_key: str, synth_path: Path,
                   config: SweepConfig) -> StageResult:
    """Classify S_eval against S_K and S′ (null rates from held-out real data)."""
    folder = run / "cache" / f"classify-{classify_key(eval_key, synth_key, heldout, config)}"
    if is_done(folder):
        return StageResult(K, json.loads((folder / "summary.json").read_text()), folder,
                           eval_path, synth_path)
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    measure = ClassifyConfig(**base_fields(ClassifyConfig, config.measure))
    own = get_protocol(measure.protocol).own_synthetic  # S′: S_eval itself, leave-one-out
    result = classify_sets(
        load_samples(eval_path, "eval", own=True), train,
        None if own else load_samples(synth_path, "synth", own=True), heldout, measure)
    write_classification(folder, result)
    mark_done(folder, {"K": K, "stage": "classify", "seconds": time.perf_counter() - t0})
    # as summary.json holds it (JSON's lists and string keys), cached or not
    return StageResult(K, json.loads(json.dumps(summary(result))), folder, eval_path,
                       synth_path)


def classify_key(eval_key: str, synth_key: str, heldout: np.ndarray,
                 config: SweepConfig) -> str:
    """The classify stage's key: its two sets, the held-out data's content and every
    ClassifyConfig field but CLASSIFY_UNKEYED (not the capacities' epsilon and bootstrap
    either, which the measure section adds: only the aggregate reads them)."""
    reads = key_fields(ClassifyConfig, config.measure, CLASSIFY_UNKEYED)
    return stage_key("classify", eval_key, synth_key, reads, fingerprint(heldout))


def run_K(run: Path, pool: np.ndarray, K: int, config: SweepConfig,
          progress: bool = False) -> StageResult:
    """All stages for one training-set size: the final state, with its snapshots."""
    train, heldout = split(pool, K, config)
    t_key, train_folder = train_stage(run, train, K, config, progress)
    steps = steps_of(config, train_folder)
    measured = [measure_state(run, K, train, heldout, t_key, train_folder, n, config, progress)
                for n in steps]
    result = replace(measured[-1], snapshots=tuple(measured[:-1]))

    census = census_stage(run, result, train, heldout, t_key, config, progress)
    return replace(result, analysis_folder=analysis_stage(run, result, train, config),
                   landscape_folder=landscape_stage(run, result, train, config),
                   endpoints_folder=census and census.endpoints,
                   census_folder=census and census.census)


def measure_state(run: Path, K: int, train: np.ndarray, heldout: np.ndarray, t_key: str,
                  train_folder: Path | None, steps: int | None, config: SweepConfig,
                  progress: bool = False) -> StageResult:
    """S_eval and S′ from one saved state (after ``steps`` steps), classified."""
    checkpoint = state_file(config, K, train_folder, steps)
    s = config.sample
    n_synth = max(s.synth_multiplier * K, s.min_synth)
    eval_key, eval_path = generate_stage(run, "eval", s.n_eval, s.eval_seed, t_key,
                                         checkpoint, train, config, progress)
    synth_key, synth_path = generate_stage(run, "synth", n_synth, s.synth_seed, t_key,
                                           checkpoint, train, config, progress)
    result = classify_stage(run, K, train, heldout, eval_key, eval_path, synth_key, synth_path,
                            config)
    compared = compare_stage(run, K, train, heldout, eval_key, eval_path, synth_key,
                             synth_path, config)
    if exports_reference(config) and steps == steps_of(config, train_folder)[-1]:
        for which, path in (("eval", eval_path), ("synth", synth_path)):
            write_reference_layout(run / "reference" / which / f"{K}.npz",
                                   load_samples(path, which, own=True))
    return replace(result, train_folder=train_folder, checkpoint=checkpoint, steps=steps,
                   compared=compared and replace(compared, steps=steps))


def compare_stage(run: Path, K: int, train: np.ndarray, heldout: np.ndarray,
                  eval_key: str, eval_path: Path, synth_key: str, synth_path: Path,
                  config: SweepConfig) -> StageResult | None:
    """The same S_eval (and S′) classified by measure.compare's protocol (None: unset): a
    classify stage of the compared measure section, so its own key (``classify_key`` of
    that section) leaves the main classification's and the sets' keys as they were, and a
    sweep run with that protocol as measure.protocol finds it cached."""
    measure = compared_measure(config)
    if measure is None:
        return None
    return classify_stage(run, K, train, heldout, eval_key, eval_path, synth_key, synth_path,
                          replace(config, measure=measure))


def state_file(config: SweepConfig, K: int, train_folder: Path | None,
               steps: int | None) -> Path | None:
    """The model state a K is sampled from: the authors' K.pt, memgen's snapshot after
    ``steps`` steps, or None (the exact denoiser)."""
    return model_source(config.model).state_file(config.model, K, train_folder, steps)


def steps_of(config: SweepConfig, train_folder: Path | None) -> list[int | None]:
    """The step counts a K is measured after ([None]: a state without training)."""
    return [None] if train_folder is None else list(train_config(config).saved_steps)


def exports_reference(config: SweepConfig) -> bool:
    """sample.export_reference (None: on for model.kind = checkpoints)."""
    if config.sample.export_reference is not None:
        return config.sample.export_reference
    return model_source(config.model).exports_reference


def run_K_task(config: SweepConfig, run: str, K: int) -> StageResult:
    """One K's stages in a worker process or a Ray task: it loads the data pool itself and
    sends back only the small StageResult (module level, so that Ray can ship it)."""
    return run_K(Path(run), load_pool(config), K, config)
