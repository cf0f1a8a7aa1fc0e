"""Sweep configuration: YAML files mapped onto frozen dataclasses by OmegaConf, strictly.

One tree: the sections are the library's own configs (``train``: TrainSettings, the base of
memgen.diffusion.training.TrainConfig; ``sample``: Sampling, the base of GenerateConfig;
``measure``: ClassifyConfig), each with the sweep's few extra fields. OmegaConf's structured
config reads the YAML and ``--set a.b=value`` (a dotlist) onto them; unknown keys, wrong types
and impossible values fail before any work starts, with a message naming the field
(``train.iterations: expected int, got 'many'``).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from memgen.data import SPLIT_RULES
from memgen.diffusion.generate import Sampling
from memgen.diffusion.nets import NetConfig
from memgen.diffusion.samplers import SAMPLERS, option_names, option_owners, sampler_spec
from memgen.diffusion.schedules import VESchedule, VPSchedule
from memgen.diffusion.sources import (SCHEDULES, SWEEP_KINDS, model_source,  # noqa: F401
                                      network, parameter_specs,
                                      sweep_field_users)  # network: read by stages
from memgen.diffusion.training import COMPILE_MODES, TrainSettings
from memgen.errors import UserError
from memgen.experiments.executors import EXECUTORS, ExecutorConfig
from memgen.experiments.reading import read_tree, structured
from memgen.metrics.classify import ClassifyConfig
from memgen.metrics.features import RegistryNames
from memgen.metrics.protocols import PROTOCOL_NAMES, REFERENCE_PROTOCOL, get_protocol
from memgen.metrics.rules import DEFAULT_RULE, RULE_NAMES, make_rule


@dataclass(frozen=True)
class DataConfig:
    name: str = "circle"  # a memgen.data.load_dataset name
    root: str | None = None
    split_seed: int | None = None  # None: 42 for the circle pool, 3407 otherwise
    # which permutation's first K is S_K (memgen.data.splits): "memgen" (numpy) or
    # "reference", the authors' torch random_split (their train_unet.py's subset, seed their
    # args.train.global_seed = 3407); None: reference for model.kind = checkpoints, else memgen
    split: str | None = None


@dataclass(frozen=True)
class ModelConfig:
    """The model of every K. A network is a preset (memgen.diffusion.nets.PRESETS) or
    described in full under ``net`` (the fields of memgen.diffusion.nets.NetConfig; unset ones
    keep its defaults)."""

    # network | exact (the empirical denoiser: no training) | checkpoints (the authors'
    # K.pt files, one per K in the folder ``path``: no training; memgen.diffusion.reference)
    # | smoothed | els | gaussian (training-free generalizers of S_K)
    kind: str = "network"
    path: str | None = None  # kind = checkpoints: the folder of <K>.pt
    # kind = checkpoints: their YAML (train_unet.py's config); None: each checkpoint's args
    reference_config: str | None = None
    preset: str | None = None  # None: toy-mlp, unless net is given
    net: NetConfig | None = None
    objective: str | None = None  # None: ve_score for MLPs, vp_eps for U-Nets
    schedule: str = "ve"  # for kind = exact, smoothed, els, gaussian: vp | ve
    # the training-free generalizers' numbers (memgen.diffusion.analytic_sources; each
    # default is its SourceParameter's): kind = smoothed: the smoothing s ≥ 0; kind = els:
    # the patch size (odd) and translation equivariance
    smoothing: float = 0.1
    draws: int = 16  # kind = smoothed: antithetic pairs of draws in its Monte-Carlo mean
    patch: int = 3
    equivariant: bool = True


@dataclass(frozen=True)
class SampleConfig(Sampling):
    """The sweep's sample section: how S_eval and S′ are sampled (memgen.diffusion.generate's
    Sampling; sampler None: ddpm (VP) or euler_maruyama (VE), clip_denoised None: on for
    ε-prediction networks (vp_eps checkpoints, as DDPM samples), off for score networks and
    the exact denoiser; prior "forward": the forward process's law N(μ, σ₀² I + Σ) of the
    training set), and how many of each."""

    n_eval: int = 1000
    synth_multiplier: int = 4  # |S'| = multiplier · K
    min_synth: int = 0  # |S'| = max(multiplier · K, min_synth)
    eval_seed: int = 1
    synth_seed: int = 2
    # also write S_eval and S' in the authors' layout (memgen.io.write_reference_layout) as
    # RUN/reference/{eval,synth}/<K>.npz; None: on for model.kind = checkpoints
    export_reference: bool | None = None


@dataclass(frozen=True)
class CompareConfig:
    """measure.compare: a second detection protocol (memgen.metrics.protocols) run on the
    same S_eval (and S′, where it reads one) of every (K, steps) state, never regenerated:
    RUN/protocols.csv, protocols.png and the d1/d2 grids. Its own rule and cutoffs (the
    reference protocol's are absolute distances in the metric's units, the paper's are
    ratios); every other setting is measure's."""

    protocol: str = REFERENCE_PROTOCOL.name
    rule: str | None = None  # None: the protocol's rule (reference: absolute), else paper
    delta_m: float | None = None  # None: the rule's default (absolute: only for lpips-*-ref)
    delta_s: float | None = None


@dataclass(frozen=True)
class MeasureConfig(ClassifyConfig):
    """The sweep's measure section: the classification (memgen.metrics.classify's
    ClassifyConfig, every field of it), the capacities' settings and the protocol compared
    (sweep only: ``memgen classify`` labels one set by one protocol; run it again with the
    other --protocol on the same files, or ``memgen rescore --samples``)."""

    bootstrap: int = 1000  # resamples of the capacities' intervals (fractions: exact)
    epsilon: float = 0.1  # capacities' error margin (eqs. 1, 3)
    compare: CompareConfig | None = None  # None: one protocol only


@dataclass(frozen=True)
class AnalysisConfig:
    """Attractor analyses of the evaluated samples, per label and K (memgen.probes.recovery,
    memgen.probes.curvature)."""

    basins: bool = False  # critical noise level σ* (basin size) of each analysed sample
    curvature: bool = False  # extreme Hessian eigenvalues of E_σ at each analysed sample
    per_label: int = 20  # samples analysed per label and K (the first ones of each label)
    sigma_lo: float = 0.2  # bisection bracket for σ* (VE units)
    sigma_hi: float | None = None  # None: min(10, the model's largest σ)
    n_trials: int = 10
    p: float = 0.9
    delta: float = 0.1  # recovered: RMS distance ≤ δ
    steps: int = 20
    rel_min: float = 0.1
    curvature_sigma: float = 0.1
    n_eigen: int = 4  # eigenvalues per point (Lanczos above 256 coordinates)
    landscape: bool = False  # 2D data, trained models: learned vs exact energy (PF-ODE)
    landscape_Ks: tuple[int, ...] = (2, 9, 1000)  # those of them that the sweep has
    landscape_sigma: float = 0.387  # σ(t = 0.15) of the toy VE SDE, as in the paper
    landscape_resolution: int = 100  # grid points per axis
    # the attractor census of each K's final state (memgen.experiments.census_stage): M
    # endpoints of a deterministic sampler (None: the schedule's, ddim for VP, heun for VE),
    # clustered at r = f · the held-out median distance to S_K for each fraction f
    census: bool = False
    census_n: int = 2000  # endpoints M
    census_sampler: str | None = None
    census_steps: int = 50
    census_fractions: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4)
    census_seed: int | None = None  # None: derived from the name "endpoints" (memgen census's)


@dataclass(frozen=True)
class SweepConfig:
    name: str = "sweep"
    notes: str = ""  # what the sweep can and cannot show: a paragraph atop its report
    Ks: tuple[int, ...] = (2, 4, 9)
    device: str = "cpu"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainSettings = field(default_factory=TrainSettings)
    sample: SampleConfig = field(default_factory=SampleConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)


CHOICES = {
    "model.kind": SWEEP_KINDS,  # the registry of memgen.diffusion.sources
    "train.compile": COMPILE_MODES,
    "data.split": (None, *SPLIT_RULES),
    "model.schedule": ("vp", "ve"),
    "model.objective": (None, "vp_eps", "ve_score"),
    "sample.sampler": RegistryNames(SAMPLERS, None),
    "analysis.census_sampler": RegistryNames(SAMPLERS, None),
    "sample.prior": (None, "standard", "forward"),
    "executor.kind": RegistryNames(EXECUTORS),
} | {f"measure.{f.name}": f.metadata["choices"] for f in fields(ClassifyConfig)
     if "choices" in f.metadata}  # rule, metric, backend: the classify options' own


def load_config(path: str | Path, overrides: typing.Sequence[str] = (),
                extra: dict | None = None) -> SweepConfig:
    """Read a YAML sweep config, merge ``key=value`` overrides (an OmegaConf dotlist) and
    ``extra`` (a nested dict, e.g. the CLI's executor flags) over it, build and check it.

    OmegaConf does the reading (:mod:`memgen.experiments.reading`): YAML 1.2 scalars
    (``1e-3`` is a float), a key given twice refused, the types of the dataclasses above;
    memgen's checks come on top (:func:`check`).
    """
    raw = read_tree(path, overrides, extra, SweepConfig)
    raw.setdefault("measure", {}).setdefault("rule", None)  # unset: the protocol's rule
    _unset_null_parameters(raw)
    config = structured(SweepConfig, raw)
    check(config)
    check_effect(config, raw)
    return config


def _unset_null_parameters(raw: dict) -> None:
    """model.smoothing=null (patch, equivariant): the key unset, as if never written, so
    that ``--set model.kind=...`` can turn a base config of one training-free kind into
    another kind (check_effect refuses a parameter the new kind does not read)."""
    model = raw.get("model")
    for key in parameter_specs() if isinstance(model, dict) else ():
        if key in model and model[key] is None:
            del model[key]


def check(config: SweepConfig) -> None:
    """Values that are well typed but impossible."""
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value not in allowed:
            shown = ", ".join("null" if a is None else a for a in allowed)
            raise UserError(f"{key}: {value!r} is not one of {shown}")
    kind, _, index = config.device.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (
            kind == "cpu" and index):
        raise UserError(f"device: {config.device!r} is not cpu, cuda or cuda:N")
    if config.executor.cpus_per_task <= 0 or config.executor.gpus_per_task < 0:
        raise UserError("executor: cpus_per_task must be positive, gpus_per_task >= 0")
    EXECUTORS[config.executor.kind].check(config.executor, config.device)
    _check_model(config.model)
    _check_checkpoints(config)
    _check_sets(config)
    _check_counts(config)
    _check_ranges(config)
    _check_measure(config)
    compared_measure(config)  # measure.compare's own errors, before any work
    _check_census(config)


def _check_census(config: SweepConfig) -> None:
    """The census's settings (checked whether or not it is on, as every analysis key): a
    deterministic sampler, M ≥ 2, a ladder its schedule family allows, positive fractions."""
    a = config.analysis
    if a.census_sampler is not None and not sampler_spec(a.census_sampler).deterministic:
        shown = ", ".join(s.name for s in SAMPLERS.values() if s.deterministic)
        raise UserError(f"analysis.census_sampler: {a.census_sampler} draws noise; the census "
                        f"needs a deterministic one: {shown}")
    if a.census_n < 2:
        raise UserError(f"analysis.census_n: must be at least 2, got {a.census_n}")
    family = model_source(config.model).schedule_family(config.model)
    try:
        SCHEDULES[family]().sigmas(a.census_steps)
    except UserError as err:
        raise UserError(f"analysis.census_steps: {err}") from None
    fractions = list(a.census_fractions)
    if not fractions or not all(0 < f < float("inf") for f in fractions):
        raise UserError(f"analysis.census_fractions: give one or more positive radius "
                        f"fractions, got {fractions}")
    if len(set(fractions)) != len(fractions):
        raise UserError(f"analysis.census_fractions: each fraction may appear only once, "
                        f"got {fractions}")


def _check_sets(config: SweepConfig) -> None:
    """The ladder's stop, the two sets' seeds, the snapshots and the K values."""
    if config.sample.stop_sigma is not None and (not 0 < config.sample.stop_sigma < float("inf")
                                                 or config.sample.final_denoise):
        raise UserError("sample.stop_sigma: must be positive and finite, and excludes "
                        "final_denoise")
    if config.sample.eval_seed == config.sample.synth_seed:
        raise UserError(f"sample.eval_seed and sample.synth_seed are both "
                        f"{config.sample.eval_seed}: the evaluated set would be a prefix of "
                        "the synthetic one (every sample spurious); give them different seeds")
    if any(not 0 < n < config.train.iterations for n in config.train.snapshots):
        raise UserError("train.snapshots: step counts must lie between 0 and train.iterations "
                         f"({config.train.iterations}), got {list(config.train.snapshots)}")
    if not config.Ks or any(K < 2 for K in config.Ks):
        raise UserError("Ks: give training-set sizes of at least 2")
    if len(set(config.Ks)) != len(config.Ks):
        raise UserError("Ks: each K may appear only once")


def _check_counts(config: SweepConfig) -> None:
    """Counts that must be at least 1."""
    positive = {"train.iterations": config.train.iterations,
                "train.batch_size": config.train.batch_size,
                "sample.n_eval": config.sample.n_eval,
                "sample.synth_multiplier": config.sample.synth_multiplier,
                "sample.batch_size": config.sample.batch_size,
                "measure.bootstrap": config.measure.bootstrap,
                "executor.workers": config.executor.workers,
                "analysis.per_label": config.analysis.per_label,
                "analysis.n_trials": config.analysis.n_trials,
                "analysis.steps": config.analysis.steps,
                "analysis.n_eigen": config.analysis.n_eigen,
                "analysis.landscape_resolution": config.analysis.landscape_resolution}
    for key, value in positive.items():
        if value < 1:
            raise UserError(f"{key}: must be at least 1, got {value}")


def _check_measure(config: SweepConfig) -> None:
    """The rule's thresholds and the neighbours it needs."""
    if config.measure.calibrate:
        raise UserError("measure.calibrate: a sweep would label each K with its own "
                        "calibrated thresholds but reports none of them (fractions.csv, the "
                        "report); give measure.delta_m and delta_s, or run memgen classify "
                        "--calibrate on a K's sets in RUN/cache")
    try:
        rule = make_rule(config.measure.rule, config.measure.delta_m, config.measure.delta_s,
                         metric=config.measure.metric)
    except ValueError as err:
        raise UserError(f"measure: {err}") from None
    if rule.needs_second_neighbour and config.measure.k == 1:
        raise UserError(f"measure.k: the {rule.name} rule needs the second nearest training "
                        "sample, so k must be at least 2 (or unset)")
    if config.measure.k is not None and config.measure.k > min(config.Ks):
        raise UserError(f"measure.k: {config.measure.k} neighbours cannot be found in the "
                        f"smallest training set (K = {min(config.Ks)})")


def compared_measure(config: SweepConfig) -> MeasureConfig | None:
    """The measure section of measure.compare (None when unset): measure's settings with the
    compared protocol, its rule and cutoffs, and the neighbours it prescribes (measure.k
    where it prescribes none). One-line UserErrors name measure.compare's keys."""
    c, m = config.measure.compare, config.measure
    if c is None:
        return None
    for key, value, allowed in (("protocol", c.protocol, PROTOCOL_NAMES),
                                ("rule", c.rule, (None, *RULE_NAMES))):
        if value not in allowed:
            shown = ", ".join("null" if a is None else a for a in allowed)
            raise UserError(f"measure.compare.{key}: {value!r} is not one of {shown}")
    if c.protocol == m.protocol:
        raise UserError(f"measure.compare.protocol: {c.protocol} is measure.protocol already; "
                        "compare another protocol")
    protocol = get_protocol(c.protocol)
    if protocol.rule is not None and c.rule not in (None, protocol.rule):
        raise UserError(f"measure.compare.rule: the {protocol.name} protocol uses the "
                        f"{protocol.rule} rule; {c.rule} contradicts it (remove the key)")
    try:
        make_rule(c.rule or protocol.rule or DEFAULT_RULE, c.delta_m, c.delta_s,
                  metric=m.metric)
    except ValueError as err:
        raise UserError(f"measure.compare: {err}") from None
    return dataclasses.replace(m, protocol=c.protocol, rule=c.rule, delta_m=c.delta_m,
                               delta_s=c.delta_s, k=m.k if protocol.k is None else None,
                               compare=None)


def check_effect(config: SweepConfig, tree: dict) -> None:
    """Keys the config gives that would have no effect in its combination: each is an
    error naming why (the user wrote them expecting an effect; the result would not show
    it). Checked on the tree as written, so that defaults never count as given. (A train
    section or model.schedule beside an exact model is let be: the shipped configs serve
    as bases that ``--set model.kind=...`` turns into the other kind.)"""
    model, sample = tree.get("model") or {}, tree.get("sample") or {}
    kind, source = config.model.kind, model_source(config.model)
    for key in ("preset", "net", "objective"):
        if key not in source.model_fields and model.get(key) is not None:  # not if =null
            raise UserError(f"model.{key}: has no effect with model.kind = {kind} "
                            f"({source.no_network}); remove it")
    for key, (_, readers) in parameter_specs().items():
        if model.get(key) is not None and source not in readers:
            raise UserError(f"model.{key}: has no effect with model.kind = {kind}; it is for "
                            f"model.kind = {', '.join(s.sweep_kind for s in readers)} "
                            f"(remove it, or --set model.{key}=null)")
    _check_sampler_options(config.sample)
    if "clip_range" in sample and sample.get("clip_denoised") is False:
        raise UserError("sample.clip_range: has no effect with sample.clip_denoised: false")


def _check_sampler_options(sample: SampleConfig) -> None:
    """A sampler's option (sample.eta) away from its default, where the sampler run (the
    one named, else the schedule's default: either may be) does not read it."""
    defaults = (VPSchedule.default_sampler, VESchedule.default_sampler)
    run = [sample.sampler] if sample.sampler is not None else defaults
    for name in option_names():
        owner = option_owners(name)[0]
        option = owner.options[name]
        if getattr(sample, name) == option.default or all(
                name in sampler_spec(s).options for s in run):
            continue
        shown = sample.sampler or f"the default ({' or '.join(defaults)})"
        raise UserError(f"sample.{name}: {option.symbol} is {owner.title}'s, but the sampler "
                        f"is {shown}; set sample.sampler: {owner.name}, or remove {name}")


MIB = 2**20  # measure.memory_budget is ClassifyConfig's, in bytes (at least one MiB)
SEED_MAX = 2**63  # what every generator (numpy, torch) accepts


def sampler_option_ranges(sample: SampleConfig) -> dict:
    """sample.NAME → (value, low, high, False) for every sampler option: the closed
    interval of its ``SamplerOption`` (η = 1 is DDIM's DDPM end of the family)."""
    ranges = {}
    for name in option_names():
        option = option_owners(name)[0].options[name]
        high = None if option.high == float("inf") else option.high
        ranges[f"sample.{name}"] = (getattr(sample, name), option.low, high, False)
    return ranges


def _check_ranges(config: SweepConfig) -> None:
    """Numbers that must lie in an interval: (value, lo, hi, lo_open) per field; hi is
    excluded except for the sampler options (closed intervals)."""
    t, s, m, a = config.train, config.sample, config.measure, config.analysis
    seeds = {"data.split_seed": config.data.split_seed, "train.seed": t.seed,
             "sample.eval_seed": s.eval_seed, "sample.synth_seed": s.synth_seed,
             "measure.seed": m.seed, "analysis.census_seed": a.census_seed}
    ranges = {key: (value, 0, SEED_MAX, False) for key, value in seeds.items()}
    closed_above = sampler_option_ranges(s)
    ranges |= {
        "train.lr": (t.lr, 0, None, True), "train.ema_decay": (t.ema_decay, 0, 1, False),
        "train.grad_clip": (t.grad_clip, 0, None, True), **closed_above,
        "sample.min_synth": (s.min_synth, 0, None, False),
        "sample.steps": (s.steps, 1, None, False), "measure.k": (m.k, 1, None, False),
        "measure.alpha": (m.alpha, 0, 1, False), "measure.epsilon": (m.epsilon, 0, 1, True),
        "analysis.sigma_lo": (a.sigma_lo, 0, None, True),
        "analysis.sigma_hi": (a.sigma_hi, a.sigma_lo, None, True),
        "analysis.p": (a.p, 0, 1, True), "analysis.delta": (a.delta, 0, None, True),
        "analysis.rel_min": (a.rel_min, 0, 1, True),
        "analysis.curvature_sigma": (a.curvature_sigma, 0, None, True),
        "analysis.landscape_sigma": (a.landscape_sigma, 0, None, True),
    }
    for key, (value, lo, hi, lo_open) in ranges.items():
        if value is None:
            continue
        below = value <= lo if lo_open else value < lo
        above = hi is not None and (value > hi if key in closed_above else value >= hi)
        if below or above or value != value:
            close = "]" if key in closed_above else ")"
            bounds = f"{'(' if lo_open else '['}{lo:g}, {'∞' if hi is None else f'{hi:g}'}{close}"
            raise UserError(f"{key}: {value!r} is out of range; it must lie in {bounds}")
    if m.memory_budget is not None and not m.memory_budget >= MIB:
        raise UserError(f"measure.memory_budget: {m.memory_budget!r} bytes is less than 1 MiB; "
                        "this key is in bytes (memgen classify's --memory-budget is in MiB): "
                        "536870912 is 512 MiB")
    if t.ema_decay == 1:
        raise UserError("train.ema_decay: 1 would never move the EMA weights")
    if s.clip_range is not None and len(s.clip_range) != 2:
        raise UserError(f"sample.clip_range: give [low, high], got {list(s.clip_range)}")
    if s.clip_range is not None and not s.clip_range[0] < s.clip_range[1]:
        raise UserError(f"sample.clip_range: {list(s.clip_range)} must be [low, high] with "
                         "low < high")


def check_device(device: str) -> None:
    """cpu, or cuda[:N] with such a GPU present on this machine (checked where the sweep
    runs, not when a config is read: shipped GPU configs stay valid on a laptop)."""
    kind, _, index = device.partition(":")
    if kind == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise UserError(f"device: {device} but torch sees no CUDA GPU on this machine")
        if index and int(index) >= count:
            raise UserError(f"device: {device} but torch sees only {count} GPU(s)")


def split_rule(config: SweepConfig) -> str:
    """The data.split of a sweep (None: its model source's: reference for the authors'
    checkpoints, else memgen)."""
    if config.data.split is not None:
        return config.data.split
    return model_source(config.model).split


def _check_checkpoints(config: SweepConfig) -> None:
    """The source's own model checks, its split and analyses; model.path and
    model.reference_config only where the source reads them (model.kind = checkpoints)."""
    m, source = config.model, model_source(config.model)
    if "path" not in source.model_fields and (m.path is not None
                                              or m.reference_config is not None):
        raise UserError("model.path, model.reference_config: only for model.kind = "
                        + ", ".join(sweep_field_users("path")))
    source.check_split(split_rule(config))
    a = config.analysis
    if not source.analysable and (a.basins or a.curvature or a.landscape
                                  or config.train.snapshots):
        raise UserError(f"model.kind = {m.kind}: analysis and train.snapshots are for "
                        "memgen's own models")


def check_checkpoint_files(config: SweepConfig) -> None:
    """The model's files exist (model.kind = checkpoints: one <K>.pt per K in model.path,
    and their YAML): checked where the sweep runs, as check_device, so that shipped
    configs stay valid without the downloads."""
    model_source(config.model).check_files(config.model, config.Ks)


def _check_model(model: ModelConfig) -> None:
    """The model section runs (a network must exist and build: checked on the meta
    device, no memory, no time)."""
    model_source(model).check_model(model)


def as_dict(config) -> dict:
    """Plain nested dict (tuples as lists) for YAML/JSON."""
    return json.loads(json.dumps(dataclasses.asdict(config)))
