"""Generating evaluation and synthetic sets as resumable npz shards.

Sample i of a set is drawn from its own random stream, seeded by (seed, i), so it does
not depend on the batch it was drawn in nor on how the work was split; finished shards
are skipped when a run is repeated, and a merged ``NAME.npz`` (key ``samples``, the
layout ``memgen classify`` reads) is written once all shards exist.

Identity. Every shard NAME-00000.npz has a record NAME-00000.json beside it, written
before it: the set's identity (``generation_identity``: the model's content hash, sampler,
steps, η, seed, prior and the prior data's hash, clipping, ladder, shape, schedule, dtype)
and the rows it holds. A repeated run reuses a shard only when both match exactly; a
shard made otherwise, one without a record (an earlier memgen) or one beyond n stops the
run with the fields that differ (``overwrite=True`` discards the set's files and starts
afresh), so a set never mixes models or settings. The shard ``.npz`` files are unchanged
(key ``samples`` only); ``NAME.json`` describes the merged ``NAME.npz``, written after it.

Modelling choices, explicit and defaulting to what memgen always did:
    prior          where x starts at the ladder's top σ₀: "standard" N(0, σ₀² I) for VE and
                   DDPM's x_T ~ N(0, I) for VP (N(0, (1 + σ₀²) I) in VE coordinates); or
                   "forward", the forward process's own law N(μ, σ₀² I + Σ) with the training
                   set's mean and covariance (``priors.forward_prior``). The standard VE start
                   ignores the data's spread: on the unit circle (Σ = I/2) with σ₀ = 1 it has
                   std 1 where the forward process has √1.5, and the PF-ODE then ends with
                   covariance σ₀² Σ(Σ + σ₀² I)⁻¹ (1/3 per axis) instead of Σ (1/2). For VP,
                   σ₀ ≈ 157 and the two differ by O(Σ/σ₀²), O(μ/σ₀).
    clip_denoised  clamp x̂₀ = D(x, σ) to clip_range at every step (Ho et al.'s clip_denoised;
                   DDIM and Heun then integrate the clipped field, not the model's ODE).
                   None: on for ε-prediction networks (``EpsDenoiser``: DDPM's own sampler, and
                   memgen's behaviour before the option), off for every other denoiser.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import zipfile
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from memgen._version import __version__
from memgen.diffusion.denoisers import EpsDenoiser
from memgen.diffusion.identity import ModelSource, array_sha256, denoiser_sha256
from memgen.diffusion.ladders import truncate_ladder
from memgen.diffusion.priors import GaussianPrior, forward_prior
from memgen.diffusion.retrieval import retrieve_fixed_point
from memgen.diffusion.rng import StackedGenerator
from memgen.diffusion.sampler_steps import clipped
from memgen.diffusion.samplers import ETA, get_sampler, sampler_spec
from memgen.diffusion.schedules import VESchedule, VPSchedule
from memgen.errors import UserError
from memgen.io import atomic_file

PRIORS = ("standard", "forward")


@dataclass(frozen=True)
class Sampling:
    """How a set is sampled: the sweep's ``sample`` section shares these fields, and the base
    of :class:`GenerateConfig`. None leaves a setting at its default (GenerateConfig's below).

    A sampler's option (``SamplerOption`` in its spec's ``options``, e.g. DDIM's η) is a
    field of the same name and default here: the draw passes the chosen sampler's options
    from these fields (``sampler_settings``), and a set's identity records them."""

    sampler: str | None = None  # None: ddpm (a sweep: its schedule's default sampler)
    steps: int | None = None  # None: the schedule's full ladder (T for VP, 1000 for VE)
    eta: float = ETA.default  # DDIM only
    final_denoise: bool = False  # end the ladder with σ = 0 (one last denoising step)
    # stop the ladder at this VE noise level and retrieve x ← D(x, σ) to a fixed point: with
    # the exact denoiser, the attractors of E_σ (mixture minima: a known spurious generator)
    stop_sigma: float | None = None
    # "standard" (None) | "forward": the start of the ladder (see the module docstring)
    prior: str | None = None
    # clamp x̂₀ to clip_range at every step; None: on for ε-networks (EpsDenoiser), else off
    clip_denoised: bool | None = None
    clip_range: tuple[float, float] | None = None  # [lo, hi] for clip_denoised; None: [-1, 1]
    batch_size: int = 256


SAMPLING_DEFAULTS = {"sampler": "ddpm", "prior": "standard", "clip_range": (-1.0, 1.0)}
# the key order of GenerateConfig.record (a set's NAME.json), as written before Sampling
RECORD_ORDER = ("n", "sampler", "steps", "eta", "seed", "batch_size", "shard_size", "name",
                "clip", "final_denoise", "stop_sigma", "prior", "clip_denoised", "clip_range")


@dataclass(frozen=True)
class GenerateConfig(Sampling):
    """One set to generate: how (:class:`Sampling`, its None settings resolved to
    SAMPLING_DEFAULTS), how many, from which seed, and how it is stored."""

    n: int = field(kw_only=True)
    seed: int = 0
    shard_size: int = 1000
    name: str = "samples"
    clip: bool = True  # clip the final samples to [−1, 1] (images)

    def record(self) -> dict:
        """The fields as a set's NAME.json records them: in RECORD_ORDER (their order before
        Sampling became the base, so that records stay byte-identical), any new one after."""
        fields_ = asdict(self)
        rank = {name: i for i, name in enumerate(RECORD_ORDER)}
        return {name: fields_[name]
                for name in sorted(fields_, key=lambda n: rank.get(n, len(rank)))}

    def __post_init__(self):
        for name, default in SAMPLING_DEFAULTS.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)  # frozen: resolved once, here
        if self.n < 1 or self.batch_size < 1 or self.shard_size < 1:
            raise UserError("n, batch_size and shard_size must be at least 1")
        if self.stop_sigma is not None and (self.final_denoise or not self.stop_sigma > 0):
            raise UserError("stop_sigma must be positive and excludes final_denoise")
        spec = sampler_spec(self.sampler)  # ValueError for unknown samplers
        if self.steps is not None and self.steps < 1:
            raise UserError(f"steps must be at least 1, got {self.steps}")
        for key, value in sampler_settings(self).items():
            if not spec.options[key].admits(value):
                raise UserError(f"{key} must lie in {spec.options[key].interval()} for "
                                f"{self.sampler}, got {value}")
        if self.prior not in PRIORS:
            raise UserError(f"unknown prior {self.prior!r}; known: {', '.join(PRIORS)}")
        if len(self.clip_range) != 2 or not self.clip_range[0] < self.clip_range[1]:
            raise UserError(f"clip_range must be a pair lo < hi, got {self.clip_range}")
        if not self.name or "/" in self.name:
            raise UserError(f"bad set name {self.name!r}")


def sampler_settings(config: Sampling) -> dict:
    """{option: value} of every option of the config's sampler (its spec's ``options``),
    read from the config's field of that name: the sampler's ``options``."""
    spec = sampler_spec(config.sampler or SAMPLING_DEFAULTS["sampler"])
    missing = [key for key in spec.options if not hasattr(config, key)]
    if missing:
        raise UserError(f"the {spec.name} sampler's option {missing[0]!r} has no field on "
                        f"{type(config).__name__} (add it to Sampling)")
    return {key: getattr(config, key) for key in spec.options}


def name_seed(name: str) -> int:
    """The default seed of a set named ``name``: the first 4 bytes of sha256(name), so sets
    of different names (eval, synth) start from different noise unless told otherwise, and
    a name gives the same seed on every run and machine (unlike Python's salted hash())."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")


def sample_seed(seed: int, index: int) -> tuple[int, int]:
    """The seed of sample ``index`` of a set generated with ``seed``: the pair itself, a
    distinct 128-bit key of its own stream for every (set, sample)."""
    return (seed, index)


def ladder(schedule, steps: int | None) -> torch.Tensor:
    """The decreasing σ ladder a sampler follows, from the schedule."""
    if isinstance(schedule, VESchedule):
        return schedule.sigmas(1000 if steps is None else steps)
    return schedule.sigmas(steps)


def initial_std(schedule, sigma0: float) -> float:
    """Std of the starting noise in VE coordinates: VP x_T ~ N(0, I) is N(0, (1 + σ_T²) I)."""
    return math.sqrt(1 + sigma0**2) if isinstance(schedule, VPSchedule) else sigma0


def start_prior(schedule, sigma0: float, prior: str = "standard", data=None) -> GaussianPrior:
    """The law of the starting point at the ladder's top σ₀ (VE coordinates, both schedules).

    data: the training set (K, ...) whose mean and covariance the "forward" prior uses."""
    if prior == "standard":
        return GaussianPrior(initial_std(schedule, sigma0))
    if prior != "forward":
        raise UserError(f"unknown prior {prior!r}; known: {', '.join(PRIORS)}")
    if data is None:
        raise UserError("prior 'forward' needs the training set (data=...)")
    return forward_prior(torch.as_tensor(data), sigma0)


def denoised_clip(denoiser, config: GenerateConfig) -> tuple[float, float] | None:
    """The (lo, hi) every x̂₀ is clamped to, or None: config.clip_denoised, where None means
    on for ε-prediction networks only."""
    on = config.clip_denoised
    if on is None:
        on = isinstance(denoiser, EpsDenoiser)
    return tuple(config.clip_range) if on else None


def sampling_ladder(schedule, config: GenerateConfig) -> torch.Tensor:
    """The σ ladder the sampler walks: the schedule's (``ladder``), with a final 0 for
    final_denoise, cut at stop_sigma; UserError for steps the schedule does not allow."""
    sigmas = ladder(schedule, config.steps)
    if config.final_denoise and float(sigmas[-1]) > 0:
        sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    if config.stop_sigma is not None:
        sigmas = truncate_ladder(sigmas, config.stop_sigma)
    return sigmas


# sampler options an identity records for every sampler, None where it does not read them
# (records before the options were the specs'); any other only for the samplers that do
ALWAYS_RECORDED = ("eta",)


def generation_identity(denoiser, shape: tuple[int, ...], schedule, config: GenerateConfig, *,
                        source: ModelSource | None = None, data=None,
                        dtype=torch.float32) -> dict:
    """What decides a set's samples, as JSON: the model (its source's content hash, else a
    fingerprint of the denoiser), the sampler and its ladder, the seed, the prior (and its
    data's hash), the clipping, the shape and dtype. Not batch_size, n or the device.
    The sampler's options follow steps: η for every sampler (None where it has none, as
    records always had it), then any other option of the sampler's own spec."""
    clip, spec = denoised_clip(denoiser, config), sampler_spec(config.sampler)
    model = source.identity() if source is not None else {
        "kind": type(denoiser).__name__, "sha256": denoiser_sha256(denoiser)}
    identity = {
        "model": model, "sampler": config.sampler,
        "sampler_revision": spec.revision, "steps": config.steps,
        **dict.fromkeys(ALWAYS_RECORDED), **sampler_settings(config),
        "seed": config.seed, "prior": config.prior,
        "prior_data_sha256": array_sha256(data) if config.prior == "forward" else None,
        "clip_denoised": clip is not None, "clip_range": clip, "clip": config.clip,
        "final_denoise": config.final_denoise, "stop_sigma": config.stop_sigma,
        "shape": list(shape), "schedule": _describe_schedule(schedule), "dtype": str(dtype),
    }
    return json.loads(json.dumps(identity))  # as it reads back: lists, not tuples


def _describe_schedule(schedule) -> dict | None:
    if schedule is None:
        return None
    return {"type": type(schedule).__name__, **asdict(schedule)}


def generate(denoiser, shape: tuple[int, ...], schedule, config: GenerateConfig, out: Path,
             *, data=None, device="cpu", dtype=torch.float32, progress: bool = True,
             source: ModelSource | None = None, overwrite: bool = False) -> Path:
    """Write shards NAME-00000.npz … (each with its record NAME-00000.json) and the merged
    NAME.npz into ``out``; return the latter.

    data: the training set (K, *shape), needed only for config.prior = "forward".
    source: where the model came from (``LoadedModel.source``): its content hash is the
        model's identity; None fingerprints the denoiser itself (``denoiser_sha256``).
    overwrite: discard this set's files in ``out`` first; otherwise shards made with
        another identity stop the run (UserError), before anything is written."""
    if config.prior == "forward" and data is None:
        raise UserError("prior 'forward' needs the training set (data=...)")
    if data is not None and tuple(data.shape[1:]) != tuple(shape):
        raise UserError(f"data samples have shape {tuple(data.shape[1:])}, not {tuple(shape)}")
    sigmas = sampling_ladder(schedule, config)
    identity = generation_identity(denoiser, shape, schedule, config, source=source,
                                   data=data, dtype=dtype)
    out = Path(out)
    n_shards = math.ceil(config.n / config.shard_size)
    if overwrite:
        discard_set(out, config.name)
    else:
        _check_shards(out, config, identity)
    out.mkdir(parents=True, exist_ok=True)
    start = None  # built when a shard is drawn: the forward prior costs a covariance
    clip = denoised_clip(denoiser, config)
    label = source.label() if source is not None else type(denoiser).__name__
    with tqdm(total=config.n, desc=f"generate {config.name}", unit="sample",
              disable=not progress) as bar:  # closed on errors too: their line stands alone
        for shard in range(n_shards):
            lo, hi = shard * config.shard_size, min(config.n, (shard + 1) * config.shard_size)
            path = out / f"{config.name}-{shard:05d}.npz"
            if not _complete(path, hi - lo):
                start = start or start_prior(schedule, float(sigmas[0]), config.prior, data)
                samples = _draw(denoiser, shape, sigmas, start, clip, config, lo, hi, device,
                                dtype, label)
                _write_json(_record_path(path), _record(identity, lo, hi))  # before the shard
                _save_npz(path, samples)
            bar.update(hi - lo)
    return _merge(out, config, n_shards, identity, clip, source)


def _merge(out: Path, config: GenerateConfig, n_shards: int, identity: dict, clip,
           source: ModelSource | None) -> Path:
    """NAME.npz from the shards, then NAME.json describing it (removed first, so a record
    never outlives the samples it describes)."""
    merged, description = out / f"{config.name}.npz", out / f"{config.name}.json"
    shards = [f"{config.name}-{s:05d}.npz" for s in range(n_shards)]
    parts = [np.load(out / name, allow_pickle=False)["samples"] for name in shards]
    description.unlink(missing_ok=True)
    _save_npz(merged, np.concatenate(parts))
    record = {"config": config.record(), "denoised_clip": clip, "identity": identity,
              "model_path": source.path if source is not None else None, "shards": shards,
              "memgen": __version__}
    _write_json(description, record)
    return merged


# ------------------------------------------------------------------- shard records


def _record_path(shard: Path) -> Path:
    return shard.with_suffix(".json")


def _record(identity: dict, lo: int, hi: int) -> dict:
    return {"identity": identity, "rows": [lo, hi], "memgen": __version__}


def _set_files(out: Path, name: str) -> dict[int, Path]:
    """The numbered shards NAME-00000.npz … of set ``name`` in ``out``, by number."""
    if not out.is_dir():
        return {}
    pattern = re.compile(re.escape(name) + r"-(\d{5,})\.npz")
    return {int(m[1]): p for p in out.iterdir() if (m := pattern.fullmatch(p.name))}


def _check_shards(out: Path, config: GenerateConfig, identity: dict) -> None:
    """UserError, before anything is written, unless every shard of the set already in
    ``out`` was made with this identity at the rows this run gives it."""
    for index, path in sorted(_set_files(out, config.name).items()):
        lo, hi = index * config.shard_size, min(config.n, (index + 1) * config.shard_size)
        problem = _mismatch(_read_record(_record_path(path)), identity, lo, hi, config.n)
        if problem:
            raise UserError(f"{path} {problem}; pass --overwrite to regenerate the set "
                            f"{config.name!r} (or choose another --out or --name)")


def _read_record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "identity" in record else None


def _mismatch(record: dict | None, identity: dict, lo: int, hi: int, n: int) -> str | None:
    """Why a shard may not be reused (None: it may): no record, other settings, other rows."""
    if record is None:
        return "has no record of what made it (an earlier memgen, or not memgen's)"
    theirs = record["identity"]
    keys = list(identity) + [k for k in theirs if k not in identity]  # the model first
    differ = [k for k in keys if theirs.get(k) != identity.get(k)]
    if differ:
        return "was made with another " + ", ".join(
            f"{k} ({_show(k, theirs.get(k))}, now {_show(k, identity.get(k))})" for k in differ)
    rows = record.get("rows") if isinstance(record.get("rows"), list) else [0, 0]
    if lo >= n:
        return f"holds samples {rows[0]}..{rows[1] - 1}, beyond --n {n}"
    if rows != [lo, hi]:
        return (f"holds samples {rows[0]}..{rows[1] - 1}, not {lo}..{hi - 1} (another "
                "--n or --shard-size)")
    return None


def _show(key: str, value) -> str:
    """A field's value in a message; content hashes shortened."""
    if key == "model" and isinstance(value, dict):
        return f"{value.get('kind')} sha256 {str(value.get('sha256'))[:12]}"
    if key.endswith("sha256") and isinstance(value, str):
        return value[:12]
    return "none" if value is None else str(value)


def discard_set(out: Path, name: str) -> None:
    """Remove set ``name``'s files from ``out``: its shards and their records, NAME.npz and
    NAME.json (other sets and files stay)."""
    for path in _set_files(out, name).values():
        _record_path(path).unlink(missing_ok=True)
        path.unlink(missing_ok=True)
    for suffix in (".json", ".npz"):
        (out / f"{name}{suffix}").unlink(missing_ok=True)


def discard_unrecorded(out: Path, name: str) -> None:
    """Remove set ``name``'s shards that have no record (an earlier memgen's): for a caller
    whose folder already fixes the model and settings (a sweep stage's cache key), they are
    drawn again rather than refused."""
    for path in _set_files(out, name).values():
        if _read_record(_record_path(path)) is None:
            path.unlink()


def _write_json(path: Path, payload: dict) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2) + "\n")


def output_bytes(n: int, shape: tuple[int, ...]) -> int:
    """Bytes a set of n float32 samples takes once as shards and once merged (headers and
    records aside)."""
    return 2 * n * math.prod(shape) * 4


def _draw(denoiser, shape, sigmas, start, clip, config, lo, hi, device, dtype,
          label: str = "the model") -> np.ndarray:
    sampler = get_sampler(config.sampler)
    options = sampler_settings(config)
    chunks = []
    for b0 in range(lo, hi, config.batch_size):
        b1 = min(hi, b0 + config.batch_size)
        generator = StackedGenerator([sample_seed(config.seed, i) for i in range(b0, b1)])
        x = start.sample((b1 - b0, *shape), generator, device=device, dtype=dtype)
        x = sampler(denoiser, x, sigmas.to(device), clip=clip, generator=generator,
                    options=options)
        if config.stop_sigma is not None:
            x = retrieve_fixed_point(clipped(denoiser, clip), x, config.stop_sigma)
        if not torch.isfinite(x).all():  # before the final clip, which would hide ±Inf
            raise UserError(f"{label} gave NaN or Inf samples: the first such batch holds "
                            f"samples {b0}..{b1 - 1} of {config.name!r}; nothing merged "
                            "(earlier shards kept)")
        chunks.append((x.clamp(-1, 1) if config.clip else x).float().cpu().numpy())
    return np.concatenate(chunks)


def _complete(path: Path, n: int) -> bool:
    """Whether a shard exists and holds n samples (a torn write is redone)."""
    if not path.exists():
        return False
    try:
        with np.load(path, allow_pickle=False) as archive:
            return len(archive["samples"]) == n
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):
        return False


def _save_npz(path: Path, samples: np.ndarray) -> None:
    with atomic_file(path) as tmp:
        np.savez(tmp, samples=samples)
