"""Sweep configuration: YAML files mapped onto frozen dataclasses, strictly.

Unknown keys, wrong types and impossible values fail before any work starts, with a
message naming the field (``train.iterations: expected int, got 'many'``). ``--set
a.b=value`` overrides are parsed as YAML scalars and applied to the same tree.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
import yaml

from memgen.data import SPLIT_RULES
from memgen.diffusion.nets import NetConfig
from memgen.diffusion.samplers import SAMPLERS, option_names, option_owners, sampler_spec
from memgen.diffusion.schedules import VESchedule, VPSchedule
from memgen.diffusion.sources import (SWEEP_KINDS, model_source, network,  # noqa: F401
                                      sweep_field_users)  # network: read here by stages
from memgen.diffusion.training import COMPILE_MODES, TrainConfig
from memgen.errors import UserError
from memgen.metrics.features import METRIC_NAMES, RegistryNames
from memgen.metrics.rules import RULE_DEFAULTS, make_rule


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
    kind: str = "network"
    path: str | None = None  # kind = checkpoints: the folder of <K>.pt
    # kind = checkpoints: their YAML (train_unet.py's config); None: each checkpoint's args
    reference_config: str | None = None
    preset: str | None = None  # None: toy-mlp, unless net is given
    net: NetConfig | None = None
    objective: str | None = None  # None: ve_score for MLPs, vp_eps for U-Nets
    schedule: str = "ve"  # for kind = exact: vp | ve


@dataclass(frozen=True)
class TrainSection:
    """The sweep's training settings. Every default is ``TrainConfig``'s (``memgen train``
    reads the same): DDPM's lr 2e-4 and EMA 0.9999, 2,000 iterations. The shipped network
    configs set their own (the toy MLP: lr 2e-3, EMA 0.999, as this section once did)."""

    iterations: int = TrainConfig.iterations
    # step counts (< iterations) at which the run is also measured: the training-time axis
    snapshots: tuple[int, ...] = TrainConfig.snapshots
    batch_size: int = TrainConfig.batch_size
    # B draws with replacement for any K (else min(B, K))
    fixed_batch: bool = TrainConfig.fixed_batch
    lr: float = TrainConfig.lr
    ema_decay: float = TrainConfig.ema_decay
    grad_clip: float = TrainConfig.grad_clip
    seed: int = TrainConfig.seed
    amp: bool = TrainConfig.amp  # bfloat16 autocast (CUDA only; ignored on the CPU)
    # EMA warm-up: the decay at step k is min(ema_decay, (1 + k)/(10 + k)), which stays below
    # 0.999 until k ≈ 9,000 (0.9999: k ≈ 90,000), so decays 0.999 and 0.9999 are identical
    # for the first ~9k steps; false: ema_decay from the first step. ema_decay 0: no EMA
    # (the EMA weights are the raw weights).
    ema_warmup: bool = TrainConfig.ema_warmup
    # torch.compile of the loss: none | default | reduce-overhead (CUDA graphs on a GPU);
    # eager, with one warning, where compiling fails. Left out of the train key when none.
    compile: str = TrainConfig.compile


@dataclass(frozen=True)
class SampleConfig:
    sampler: str | None = None  # None: ddpm (VP) or euler_maruyama (VE)
    steps: int | None = None
    eta: float = 0.0
    final_denoise: bool = False  # end with a σ = 0 step (VE ladders stop at σ(t_min))
    # stop at this VE noise level and retrieve x ← D(x, σ) to its fixed point (with the
    # exact denoiser: the attractors of E_σ, the positive control for spurious states)
    stop_sigma: float | None = None
    # start of the ladder (memgen.diffusion.generate): null/"standard" N(0, σ₀² I) (VP: DDPM's
    # N(0, I)); "forward" the forward process's law N(μ, σ₀² I + Σ) of the training set
    prior: str | None = None
    # clamp x̂₀ to clip_range at every step; null: on for ε-prediction networks (vp_eps
    # checkpoints, as DDPM samples), off for score networks and the exact denoiser
    clip_denoised: bool | None = None
    clip_range: tuple[float, float] | None = None  # null: [-1, 1]
    n_eval: int = 1000
    synth_multiplier: int = 4  # |S'| = multiplier · K
    min_synth: int = 0  # |S'| = max(multiplier · K, min_synth)
    eval_seed: int = 1
    synth_seed: int = 2
    batch_size: int = 256
    # also write S_eval and S' in the authors' layout (memgen.io.write_reference_layout) as
    # RUN/reference/{eval,synth}/<K>.npz; None: on for model.kind = checkpoints
    export_reference: bool | None = None


@dataclass(frozen=True)
class MeasureConfig:
    metric: str = "l2"
    rule: str = "paper"
    delta_m: float | None = None
    delta_s: float | None = None
    k: int | None = None
    alpha: float = 0.05
    bootstrap: int = 1000  # resamples of the capacities' intervals (fractions: exact)
    seed: int = 0
    epsilon: float = 0.1  # capacities' error margin (eqs. 1, 3)
    dedup: bool = False  # d2 against the nearest distinct training image (classify --dedup)


@dataclass(frozen=True)
class ExecutorConfig:
    kind: str = "local"  # local | ray
    workers: int = 1
    address: str | None = None
    cpus_per_task: float = 1.0
    gpus_per_task: float = 0.0


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
    n_eigen: int = 4  # eigenvalues per point (Lanczos above 256 coordinates); "k" in keys
    landscape: bool = False  # 2D data, trained models: learned vs exact energy (PF-ODE)
    landscape_Ks: tuple[int, ...] = (2, 9, 1000)  # those of them that the sweep has
    landscape_sigma: float = 0.387  # σ(t = 0.15) of the toy VE SDE, as in the paper
    landscape_resolution: int = 100  # grid points per axis


@dataclass(frozen=True)
class SweepConfig:
    name: str = "sweep"
    notes: str = ""  # what the sweep can and cannot show: a paragraph atop its report
    Ks: tuple[int, ...] = (2, 4, 9)
    device: str = "cpu"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainSection = field(default_factory=TrainSection)
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
    "sample.prior": (None, "standard", "forward"),
    "measure.rule": tuple(RULE_DEFAULTS),
    "measure.metric": METRIC_NAMES,
    "executor.kind": ("local", "ray"),
}


def load_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> SweepConfig:
    """Read a YAML sweep config, apply ``key=value`` overrides, build and check it."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder; give a YAML sweep config file")
    if not path.is_file():
        raise UserError(f"no such config file: {path}")
    try:
        tree = yaml.load(path.read_text(), Loader=StrictLoader) or {}
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file (a YAML sweep config is text)") from None
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({_yaml_error(err)})") from None
    if not isinstance(tree, dict):
        raise UserError(f"{path}: the top level must be a mapping")
    if not tree:
        raise UserError(f"{path}: the config is empty (see configs/ for examples)")
    for item in overrides:
        _apply_override(tree, item)
    config = build(SweepConfig, tree, "")
    check(config)
    check_effect(config, tree)
    return config


class StrictLoader(yaml.SafeLoader):
    """yaml's safe loader, except that a key given twice in one mapping is an error (the
    safe loader keeps the last value silently)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice ("
                    + (f"line {line}" if seen[key] == line else f"lines {seen[key]} and {line}")
                    + ")", key_node.start_mark)
            if isinstance(key, typing.Hashable):
                seen[key] = line
        return super().construct_mapping(node, deep)


def _yaml_error(err: yaml.YAMLError) -> str:
    """The first line of a YAML error: its problem, with the line where the parser has one."""
    problem = getattr(err, "problem", None)
    mark = getattr(err, "problem_mark", None)
    if problem and mark is not None and "line" not in problem:
        return f"{problem}, line {mark.line + 1}"
    return problem or str(err).splitlines()[0]


def _apply_override(tree: dict, item: str) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise UserError(f"--set expects key=value, got {item!r}")
    *parents, leaf = key.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"--set {key}: {part} is not a section")
    try:
        node[leaf] = yaml.load(text, Loader=StrictLoader)
    except yaml.YAMLError as err:
        raise UserError(f"--set {key}: not a YAML value ({_yaml_error(err)})") from None


def build(cls, tree, where: str):
    """Instantiate dataclass ``cls`` from a mapping, checking every key and type."""
    if not isinstance(tree, dict):
        raise UserError(f"{where or 'config'}: expected a mapping, got {tree!r}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(tree) - set(known))
    if unknown:
        raise UserError(f"{_join(where, unknown[0])}: unknown key (known: {', '.join(known)})")
    missing = [f.name for f in fields(cls) if f.name not in tree
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise UserError(f"{_join(where, missing[0])}: required")
    hints = typing.get_type_hints(cls)
    values = {name: _coerce(hints[name], tree[name], _join(where, name))
              for name in tree}
    return cls(**values)


def _coerce(hint, value, where: str):
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    if value is None and type(None) in options:
        return None
    for option in options:
        if option is type(None):
            continue
        if dataclasses.is_dataclass(option):
            return build(option, value, where)
        ok, out = _as_type(option, value)
        if ok:
            return out
    names = " or ".join("null" if o is type(None) else getattr(o, "__name__", str(o))
                        for o in options)
    raise UserError(f"{where}: expected {names}, got {value!r}")


def _as_type(option, value):
    """(True, converted) if value fits the annotation ``option``."""
    if typing.get_origin(option) is tuple:
        item = typing.get_args(option)[0]
        if isinstance(value, (list, tuple)) and all(_as_type(item, v)[0] for v in value):
            return True, tuple(_as_type(item, v)[1] for v in value)
        return False, None
    if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return True, float(value)
    if option is float and isinstance(value, str) and FLOAT_TEXT.fullmatch(value):
        return True, float(value)  # 1e-3: YAML 1.1 reads a float without a dot as text
    if option is int and isinstance(value, int) and not isinstance(value, bool):
        return True, value
    if option in (str, bool) and isinstance(value, option):
        return True, value
    return False, None


FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")  # 1e-3, 2E5, -3.e+2


def _is_union(hint) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


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
    if config.executor.kind == "ray" and importlib.util.find_spec("ray") is None:
        raise UserError("executor.kind: ray needs the ray package "
                         "(pip install ray)")
    if config.executor.cpus_per_task <= 0 or config.executor.gpus_per_task < 0:
        raise UserError("executor: cpus_per_task must be positive, gpus_per_task >= 0")
    if (config.executor.kind == "ray" and config.device.startswith("cuda")
            and config.executor.gpus_per_task == 0):
        raise UserError("executor.gpus_per_task: a cuda sweep on Ray must declare the GPUs "
                         "each task uses (e.g. 1)")
    _check_model(config.model)
    _check_checkpoints(config)
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
    _check_ranges(config)
    try:
        make_rule(config.measure.rule, config.measure.delta_m, config.measure.delta_s,
                  metric=config.measure.metric)
    except ValueError as err:
        raise UserError(f"measure: {err}") from None
    if config.measure.rule == "paper" and config.measure.k == 1:
        raise UserError("measure.k: the paper rule needs the second nearest training "
                        "sample, so k must be at least 2 (or unset)")
    if config.measure.k is not None and config.measure.k > min(config.Ks):
        raise UserError(f"measure.k: {config.measure.k} neighbours cannot be found in the "
                        f"smallest training set (K = {min(config.Ks)})")


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


SEED_MAX = 2**63  # what every generator (numpy, torch) accepts
CLOSED_ABOVE = ("sample.eta",)  # η = 1 is DDIM's DDPM end of the family


def _check_ranges(config: SweepConfig) -> None:
    """Numbers that must lie in an interval: (value, lo, hi, lo_open) per field; hi is
    excluded except for the fields of CLOSED_ABOVE."""
    t, s, m, a = config.train, config.sample, config.measure, config.analysis
    seeds = {"data.split_seed": config.data.split_seed, "train.seed": t.seed,
             "sample.eval_seed": s.eval_seed, "sample.synth_seed": s.synth_seed,
             "measure.seed": m.seed}
    ranges = {key: (value, 0, SEED_MAX, False) for key, value in seeds.items()}
    ranges |= {
        "train.lr": (t.lr, 0, None, True), "train.ema_decay": (t.ema_decay, 0, 1, False),
        "train.grad_clip": (t.grad_clip, 0, None, True), "sample.eta": (s.eta, 0, 1, False),
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
        above = hi is not None and (value > hi if key in CLOSED_ABOVE else value >= hi)
        if below or above or value != value:
            close = "]" if key in CLOSED_ABOVE else ")"
            bounds = f"{'(' if lo_open else '['}{lo:g}, {'∞' if hi is None else f'{hi:g}'}{close}"
            raise UserError(f"{key}: {value!r} is out of range; it must lie in {bounds}")
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
