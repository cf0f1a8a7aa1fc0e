"""Training diffusion models by denoising score matching (paper App. B.3).

Objectives (x₀ a training sample, n ~ N(0, I)):
    vp_eps    DDPM (Ho et al. 2020): t ~ U{0..T−1}, x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) n,
              loss ‖ε_θ(x_t, t) − n‖².
    ve_score  VE SDE of the 2D toy: t ~ U(t_min, 1), σ = σ_max √t, x = x₀ + σ n, score
              s_θ(x, t) = F_θ(x, t)/σ (the network output divided by the noise std, as in
              Song et al.'s tutorial code), loss ‖σ s_θ + n‖² = ‖F_θ + n‖² (the λ(t) = σ²
              weighting of ‖s_θ − ∇ log p(x | x₀)‖²).
(Both are the parameterizations of ``memgen.diffusion.parameterization``, which also turn
the trained network into a denoiser: ``TrainConfig.parameterization``.)
Adam, EMA of the weights (by default with the warm-up min(decay, (1 + k)/(10 + k)), see
``update_ema``; ``ema_decay = 0``: no EMA, the EMA weights are the raw weights), gradient
clipping, batch min(B, K) (the reference U-Nets; or B draws with replacement for any K,
``fixed_batch``), a fixed iteration budget, one seed for everything: the model's
initial weights, the batches, t and the noise, and dropout (run inside a forked global
RNG, so the caller's RNG is untouched). Checkpoints carry the config, the weights, the
EMA weights, the optimiser and every RNG state, and load with weights_only=True; a run
resumes from its last checkpoint and continues exactly as if it had not stopped.
A step (``memgen.diffusion.train_step``) never waits for the device: the loss is summed
there and read at the log points only, and the batches are drawn several steps ahead.
Multi-process training runs under ``torchrun`` (DistributedDataParallel): each rank
draws its own share of the batch from its own seeded stream.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from memgen.data import (default_split_seed, heldout_indices, load_dataset, nested_indices,
                         resize_images)
from memgen.diffusion.nets import PRESETS, NetConfig, get_preset
from memgen.diffusion.parameterization import PARAMETERIZATIONS, get_parameterization
from memgen.diffusion.schedules import VESchedule, VPSchedule
from memgen.diffusion.train_step import FlatAdam, StepTensors, TrainStep, ema_decay, ema_step
from memgen.errors import UserError
from memgen.io import atomic_file

OBJECTIVES = tuple(PARAMETERIZATIONS)
CHECKPOINT = "checkpoint.pt"
SNAPSHOTS = "snapshots"
LOG = "log.jsonl"
# Fields that set how long a run goes and what it writes, not where it goes: runs that
# differ only in these follow one trajectory, so one resumes from the other's states.
BUDGET_FIELDS = ("iterations", "snapshots", "log_every", "checkpoint_every")
COMPILE_MODES = ("none", "default", "reduce-overhead")  # TrainConfig.compile


@dataclass(frozen=True)
class TrainSettings:
    """How a network is optimised: the sweep's ``train`` section, and the base of
    :class:`TrainConfig`. The defaults are DDPM's lr 2e-4 and EMA 0.9999, 2,000 iterations
    (the shipped network configs set their own: the toy MLP's lr 2e-3, EMA 0.999)."""

    iterations: int = 2000
    # also keep the state after these many steps (< iterations): the training-time axis
    snapshots: tuple[int, ...] = ()
    batch_size: int = 128  # the batch is min(batch_size, K) ...
    fixed_batch: bool = False  # ... or batch_size draws with replacement whatever K is
    lr: float = 2e-4
    ema_decay: float = 0.9999  # 0: no EMA (the EMA weights equal the raw weights)
    # EMA warm-up: the decay at step k is min(ema_decay, (1 + k)/(10 + k)) (update_ema), which
    # stays below 0.999 until k ≈ 9,000 (0.9999: k ≈ 90,000), so decays 0.999 and 0.9999 are
    # identical for the first ~9k steps; false: ema_decay from the first step
    ema_warmup: bool = True
    grad_clip: float = 1.0
    seed: int = 3407
    amp: bool = False  # bfloat16 autocast on CUDA (ignored on the CPU)
    # torch.compile the loss (the network's forward with it): "default", or "reduce-overhead"
    # (CUDA graphs on a GPU); eager, with one warning, where compiling fails (train_step).
    compile: str = "none"


@dataclass(frozen=True)
class TrainConfig(TrainSettings):
    """A training run: the optimisation (:class:`TrainSettings`), the network and its
    objective, and what the run writes."""

    preset: str = "fmnist-cpu-16"  # the network, unless `network` describes it
    objective: str = "vp_eps"
    log_every: int = 100
    checkpoint_every: int = 1000
    beta_min: float = 1e-4  # vp_eps schedule
    beta_max: float = 0.02
    T: int = 1000
    sigma_max: float = 1.0  # ve_score schedule
    t_min: float = 1e-3
    network: dict | None = None  # a NetConfig.to_dict(): the full network, stored with it

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise UserError(f"unknown objective {self.objective!r}; known: {', '.join(OBJECTIVES)}")
        for name in ("iterations", "batch_size", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1")
        if not (0 < self.lr < float("inf") and 0 <= self.ema_decay < 1
                and 0 < self.grad_clip < float("inf")):
            raise UserError("need 0 < lr < inf, 0 <= ema_decay < 1 and 0 < grad_clip < inf")
        if any(not 0 < n <= self.iterations for n in self.snapshots):
            raise UserError(f"snapshots must lie in 1..iterations, got {list(self.snapshots)}")
        if self.compile not in COMPILE_MODES:
            raise UserError(f"unknown compile mode {self.compile!r}; known: "
                            f"{', '.join(COMPILE_MODES)}")

    @property
    def net(self) -> NetConfig:
        if self.network is not None:
            return NetConfig.from_dict(self.network)
        return get_preset(self.preset)

    @property
    def saved_steps(self) -> tuple[int, ...]:
        """Step counts whose state is kept under snapshots/: the snapshots and the end."""
        return tuple(sorted(set(self.snapshots) | {self.iterations}))

    def trajectory(self) -> dict:
        """The fields that decide the weights after n steps, for any n (not the budget)."""
        return {k: v for k, v in json.loads(json.dumps(asdict(self))).items()
                if k not in BUDGET_FIELDS}

    def schedule(self):
        if self.objective == "vp_eps":
            return VPSchedule(self.beta_min, self.beta_max, self.T)
        return VESchedule(self.sigma_max, self.t_min)

    def parameterization(self):
        """The objective's parameterization on its schedule: the loss, the law of t, and
        the denoiser of a trained network (``memgen.diffusion.parameterization``)."""
        return get_parameterization(self.objective, self.schedule())

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in json.loads(text).items() if k in known}
        if "snapshots" in values:
            values["snapshots"] = tuple(values["snapshots"])
        return cls(**values)


def snapshot_path(out: str | Path, step: int) -> Path:
    """Where a run keeps its state after ``step`` steps (a checkpoint like checkpoint.pt)."""
    return Path(out) / SNAPSHOTS / f"step-{step:08d}.pt"


def training_loss(model: nn.Module, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                  config: TrainConfig, schedule) -> torch.Tensor:
    """The objective's mean loss for given t (B,) and noise (like x0) on ``schedule``: the
    ``loss`` of its parameterization (``memgen.diffusion.parameterization``)."""
    return get_parameterization(config.objective, schedule).loss(model, x0, t, noise)


def draw_batch(data: torch.Tensor, batch: int, config: TrainConfig, generator: torch.Generator):
    """(x0, t, noise) for one step, all from ``generator`` (on CPU, then moved)."""
    idx = torch.randint(len(data), (batch,), generator=generator)
    x0 = data.index_select(0, _to(idx, data.device))  # data[idx], through a lighter path
    t = config.parameterization().draw_t(batch, generator, data.dtype)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    return x0, _to(t, data.device), _to(noise, data.device)


def _to(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move a CPU tensor; to CUDA through pinned memory without waiting (a pageable copy
    would stall the host until the GPU has drained its queue, every step)."""
    if x.device == device:
        return x
    if device.type != "cuda":
        return x.to(device)
    return x.pin_memory().to(device, non_blocking=True)


@dataclass
class TrainState:
    """Everything a checkpoint holds, live."""

    model: nn.Module
    ema: nn.Module
    optimizer: FlatAdam  # torch.optim.Adam's numbers and state_dict, one kernel a step
    generator: torch.Generator
    step: int = 0


def new_state(config: TrainConfig, device: torch.device, rank: int = 0) -> TrainState:
    """Model, EMA copy and optimiser with seeded initial weights (identical on every rank);
    the model's parameters are views of the optimiser's buffer (``FlatAdam``)."""
    with torch.random.fork_rng(devices=[]):
        torch.random.set_rng_state(torch.Generator().manual_seed(config.seed).get_state())
        model = replace(config.net, seed=config.seed).build().to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    generator = torch.Generator().manual_seed(config.seed + 1 + rank)
    return TrainState(model, ema, FlatAdam(model.parameters(), config.lr), generator)


def save_checkpoint(path: Path, state: TrainState, config: TrainConfig,
                    rng: list[tuple[torch.Tensor, torch.Tensor]]):
    """Atomically write the checkpoint (``memgen.io.atomic_file``).

    rng: per rank, (batch generator state, CPU RNG state) — every rank resumes its own.
    """
    payload = {"config": json.dumps(asdict(config)), "step": state.step,
               "model": state.model.state_dict(), "ema": state.ema.state_dict(),
               "optimizer": state.optimizer.state_dict(),
               "generators": [g for g, _ in rng], "cpu_rngs": [c for _, c in rng]}
    with atomic_file(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """A checkpoint as a dict (weights_only: no pickled code is ever run)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such checkpoint: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises assorted types for corrupt files
        raise UserError(f"cannot read checkpoint {path} ({type(err).__name__})") from None


def restore(state: TrainState, payload: dict, rank: int = 0) -> torch.Tensor:
    """Load a checkpoint into a state; returns this rank's saved CPU RNG state."""
    if rank >= len(payload["generators"]):
        raise UserError("the checkpoint was written by fewer processes; resume with as many")
    state.model.load_state_dict(payload["model"])
    state.ema.load_state_dict(payload["ema"])
    state.optimizer.load_state_dict(payload["optimizer"])
    state.generator.set_state(payload["generators"][rank])
    state.step = int(payload["step"])
    return payload["cpu_rngs"][rank]


def update_ema(ema: nn.Module, model: nn.Module, decay: float, step: int,
               warmup: bool = True) -> None:
    """ema ← d·ema + (1 − d)·θ with d = min(decay, (1 + step)/(10 + step)), or d = decay
    without ``warmup``; buffers are copied. decay = 0: ema ← θ exactly (no EMA).

    The warm-up caps d below 0.999 until step ≈ 8,990 (0.9999: ≈ 89,990), so decays 0.999
    and 0.9999 give identical EMAs for the first ~9k steps; while it binds, the EMA after k
    steps weights θ_m by ≈ 9 m⁸/k⁹ (the product of (1 + j)/(10 + j)), an average over
    about the last 20% of the run whatever the decay. Without it, after k steps from
    ema = θ_0: ema = d^k θ_0 + (1 − d) Σ_{j=1..k} d^{k−j} θ_j, θ_j the weights after step j.
    """
    ema_step(StepTensors.of(model, ema), ema_decay(decay, step, warmup))


def train(config: TrainConfig, data: torch.Tensor, out: str | Path, *, progress: bool = True,
          stop_after: int | None = None) -> TrainState:
    """Train on ``data`` (K, ...) until config.iterations; returns the state after it.

    Keeps the state after every step count of ``config.saved_steps`` in out/snapshots/ and
    the latest one in out/checkpoint.pt. Resumes from the latest saved state that comes
    before the first missing snapshot, so a longer budget continues where a shorter one
    stopped and a new snapshot inside a finished run retrains only from the one before it.
    stop_after: return after this many steps of this call (to test resumption).
    """
    out = Path(out)
    rank, world = _distributed()
    state = new_state(config, data.device, rank)
    cpu_rng = torch.Generator().manual_seed(config.seed + 10_000 + rank).get_state()
    latest = _saved_step(out / CHECKPOINT)
    start = _resume_point(out, config, latest)
    if start is not None:
        payload = load_checkpoint(start, data.device)
        if TrainConfig.from_json(payload["config"]).trajectory() != config.trajectory():
            raise UserError(f"{start} was made with another config; use a new --out")
        cpu_rng = restore(state, payload, rank)
        if rank == 0:
            _truncate_log(out / LOG, state.step)
    out.mkdir(parents=True, exist_ok=True)
    model = nn.parallel.DistributedDataParallel(state.model) if world > 1 else state.model
    saver = _Saver(out, config, rank, world, latest)
    with torch.random.fork_rng(devices=[]):
        torch.random.set_rng_state(cpu_rng)
        saver.after_step(state)
        _loop(config, data, out, state, model, rank, progress, stop_after, saver)
        saver.save(state, out / CHECKPOINT)
    if world > 1:  # no rank leaves while another is still inside a collective
        dist.barrier()
    return state


def _saved_step(path: Path) -> int:
    """The step a checkpoint file holds (−1 when there is none)."""
    return int(load_checkpoint(path)["step"]) if path.exists() else -1


def _resume_point(out: Path, config: TrainConfig, latest: int) -> Path | None:
    """The saved state to start from: the latest one at or before the first snapshot still
    to be made (the end state itself when nothing is missing); None to start afresh."""
    missing = [n for n in config.saved_steps if not snapshot_path(out, n).exists()]
    if not missing:
        return snapshot_path(out, config.iterations)
    saved = {n: snapshot_path(out, n) for n in config.saved_steps if n not in missing}
    if out.joinpath(SNAPSHOTS).is_dir():
        for path in out.joinpath(SNAPSHOTS).glob("step-*.pt"):
            saved.setdefault(int(path.stem.removeprefix("step-")), path)
    if latest >= 0:
        saved.setdefault(latest, out / CHECKPOINT)
    before = [n for n in saved if n <= missing[0]]
    return saved[max(before)] if before else None


class _Saver:
    """Writes snapshots and checkpoint.pt; checkpoint.pt only ever moves forward."""

    def __init__(self, out: Path, config: TrainConfig, rank: int, world: int, latest: int):
        self.out, self.config, self.rank, self.world = out, config, rank, world
        self.latest = latest
        # decided once, before any rank writes: saving is collective under DDP, so every
        # rank must agree on it rather than look at files that rank 0 may just have made
        self.pending = {n for n in config.saved_steps if not snapshot_path(out, n).exists()}

    def after_step(self, state: TrainState) -> None:
        """Keep the state if this step is a snapshot that was not on disk at the start."""
        if state.step in self.pending:
            path = snapshot_path(self.out, state.step)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.save(state, path)
            self.pending.discard(state.step)

    def next_save(self, step: int) -> int:
        """The first step after ``step`` whose state may be written (``periodic`` or
        ``after_step``)."""
        every = self.config.checkpoint_every
        return min([step + every - step % every, *(n for n in self.pending if n > step)])

    def periodic(self, state: TrainState) -> None:
        if state.step % self.config.checkpoint_every == 0:
            self.save(state, self.out / CHECKPOINT)

    def save(self, state: TrainState, path: Path) -> None:
        """Gather every rank's RNG states; rank 0 writes the file."""
        if path.name == CHECKPOINT and state.step < self.latest:
            return
        mine = (state.generator.get_state(), torch.random.get_rng_state())
        states = [mine]
        if self.world > 1:
            states = [None] * self.world
            dist.all_gather_object(states, mine)
        if self.rank == 0:
            save_checkpoint(path, state, self.config, states)
        if path.name == CHECKPOINT:
            self.latest = state.step


def _loop(config, data, out, state, model, rank, progress, stop_after, saver):
    full = config.batch_size if config.fixed_batch else min(config.batch_size, len(data))
    batch = max(1, full // saver.world)
    end = config.iterations if stop_after is None else min(config.iterations,
                                                           state.step + stop_after)
    step = TrainStep(config, state, model, data.device)
    bar = tqdm(total=config.iterations, initial=state.step, desc="train", unit="it",
               disable=not progress or rank != 0)
    t0, losses = time.perf_counter(), []
    model.train()
    for x0, t, noise in _batches(data, batch, config, state, saver, end):
        losses.append(step(x0, t, noise))  # on the device: no wait until a log
        bar.update(1)
        if state.step % config.log_every == 0 or state.step == config.iterations:
            mean = float(torch.stack(losses).sum()) / len(losses)
            if not np.isfinite(mean):  # diverged: no NaN weights written from here on
                bar.close()
                raise UserError(f"the training loss became {mean} by step {state.step}: the "
                                "run diverged (lower --lr?); checkpoints written before it "
                                "are kept")
            if rank == 0:
                _log(out, state.step, mean, time.perf_counter() - t0)
            bar.set_postfix(loss=f"{mean:.4f}")
            losses = []
        saver.after_step(state)
        if state.step < end:
            saver.periodic(state)
    bar.close()


AHEAD_STEPS, AHEAD_BYTES = 64, 16 * 2**20  # how far _batches draws ahead, at most


def _batches(data, batch: int, config: TrainConfig, state: TrainState, saver: "_Saver",
             end: int):
    """The batches of steps state.step + 1 .. end, as ``draw_batch`` draws them, drawn up to
    AHEAD_STEPS (and AHEAD_BYTES) ahead in a tight loop — a draw between two steps runs on
    cold caches, at ~4× the cost on the toy MLP — but never past a step whose state is
    saved, where the batch generator must hold its state after that step. The caller
    takes each step before it asks for the next batch."""
    while state.step < end:
        last = min(end, saver.next_save(state.step), state.step + ahead_steps(data, batch))
        yield from [draw_batch(data, batch, config, state.generator)
                    for _ in range(last - state.step)]


def ahead_steps(data: torch.Tensor, batch: int) -> int:
    """How many batches ``_batches`` draws at a time, at most (AHEAD_STEPS, AHEAD_BYTES)."""
    size = 2 * batch * data[0].numel() * data.element_size()  # x0 and noise
    return max(1, min(AHEAD_STEPS, AHEAD_BYTES // size))


def _log(out: Path, step: int, loss: float, seconds: float) -> None:
    record = {"step": step, "loss": loss, "seconds": round(seconds, 3)}
    with (out / LOG).open("a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_log(path: Path, step: int) -> None:
    """Drop log records written after the checkpoint a run resumes from."""
    if path.exists():
        lines = [ln for ln in path.read_text().splitlines() if json.loads(ln)["step"] <= step]
        path.write_text("".join(ln + "\n" for ln in lines))


def _distributed() -> tuple[int, int]:
    """(rank, world size); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


def training_samples(net: NetConfig, samples: np.ndarray | None = None, data: str = "fmnist",
                     K: int | None = None, split_seed: int | None = None,
                     root: str | None = None, half: int = 1, *, resize: bool = True,
                     preset: str | None = None) -> np.ndarray:
    """The training set for a network: given samples, or K samples of the seeded split of
    a named data set — the first K (half 1), or the next K, disjoint from them (half 2).
    Images of another size are resized to the network's (``resize``) or refused, naming
    the presets that fit (:func:`check_fits`; ``preset`` names the network in messages).
    float32, contiguous."""
    if samples is None:
        if K is None:
            raise UserError("give --K (training-set size) or --train FILE")
        if half not in (1, 2):
            raise UserError(f"half must be 1 or 2, got {half}")
        pool = load_dataset(data, "train", root)
        if half * K > len(pool):
            raise UserError(f"--K {K}: half {half} needs {half * K} of the {len(pool)} "
                             f"samples of {data}")
        seed = split_seed if split_seed is not None else default_split_seed(data)
        picks = nested_indices(len(pool), K, seed) if half == 1 else \
            heldout_indices(len(pool), K, seed)[:K]
        samples = pool[picks]
    check_fits(net, samples.shape[1:], resize, preset)
    if net.kind == "unet":
        samples = resize_images(samples, net.image_size)
    return np.ascontiguousarray(samples, dtype=np.float32)


def check_fits(net: NetConfig, shape: tuple[int, ...], resize: bool = False,
               preset: str | None = None) -> None:
    """UserError unless samples of ``shape`` (C, H, W) or (D,) fit the network: its
    channels and image size (another size only with ``resize``), or its dimension. The
    message names the data's size, the network's and the presets that fit the data."""
    shape = tuple(shape)
    images = net.kind == "unet" and len(shape) == 3 and shape[0] == net.channels
    if shape == net.sample_shape or (images and resize):
        return
    data = ("×".join(map(str, shape)) + " images" if len(shape) == 3 else
            f"{shape[0]}-dimensional vectors" if len(shape) == 1 else f"samples of shape {shape}")
    others = [n for n, c in PRESETS.items() if n != preset and c.sample_shape == shape]
    advice = f"presets that fit: {', '.join(others)}" if others else "no preset fits them"
    if images:
        advice += f"; or pass --resize to resize them to {net.image_size}×{net.image_size}"
    name = f"preset {preset}" if preset else "the network"
    raise UserError(f"the data are {data} but {name} takes {net.takes} ({advice})")


