"""One training step of a network on a GPU: ``TrainStep`` eager and compiled, against the same
model's bare forward + backward + Adam in the same run (the issue's item 4: the paper's
24.5 M-parameter Fashion-MNIST U-Net is launch-bound on an H100, 45–52 ms a step at any
batch from 2 to 128).

Per batch size, each timed after its own warm-up (compiling happens there):

1. bare: ``loss = parameterization.loss(model, x0, t, noise)``, ``zero_grad``,
   ``backward``, torch's fused Adam ``step``: what any training loop runs;
2. ``TrainStep`` with ``compile="none"`` (eager), then with each ``--modes`` entry
   (``reduce-overhead``: torch.compile with CUDA graphs; ``default``: without).

A step's batch is drawn before the clock starts (``draw_batch``), so the rows time the step
alone; every row ends with ``torch.cuda.synchronize()``. The ratio is the bare step's time
over the row's. On a CPU the script runs too (``--device cpu --preset toy-mlp --modes``
with no mode: a smoke test), but its numbers answer another question.

    python bench/gpu_step.py [--preset fmnist --batches 2 32 128 --steps 50 --warmup 10
                              --modes reduce-overhead]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch
from training import make_config, make_data

from memgen.diffusion.nets import count_parameters, get_preset
from memgen.diffusion.train_step import TrainStep
from memgen.diffusion.training import TrainConfig, draw_batch, new_state


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run, batches, warmup: int, device: torch.device) -> float:
    """Seconds per call of run(x0, t, noise), after ``warmup`` calls."""
    for batch in batches[:warmup]:
        run(*batch)
    sync(device)
    t0 = time.perf_counter()
    for batch in batches[warmup:]:
        run(*batch)
    sync(device)
    return (time.perf_counter() - t0) / (len(batches) - warmup)


def bare_step(config: TrainConfig, device: torch.device):
    """The plain loop: the objective's loss, zero_grad, backward, torch's fused Adam."""
    model = replace(config.net, seed=config.seed).build().to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, fused=True)
    loss_fn = config.parameterization().loss

    def run(x0, t, noise):
        loss = loss_fn(model, x0, t, noise)
        optimizer.zero_grad(set_to_none=False)
        loss.backward()
        optimizer.step()
    return run


def train_step(config: TrainConfig, device: torch.device) -> TrainStep:
    """memgen's step (``training.train``'s loop body): loss, backward, clip, Adam, EMA."""
    state = new_state(config, device)
    return TrainStep(config, state, state.model.train(), device)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="fmnist")
    parser.add_argument("--batches", type=int, nargs="+", default=[2, 32, 128])
    parser.add_argument("--steps", type=int, default=50, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--modes", nargs="*", default=["reduce-overhead"],
                        help="torch.compile modes of TrainStep to time after eager")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA device here; use --device cpu for a smoke test")
    if args.steps < 1 or args.warmup < 0 or min(args.batches) < 1:
        parser.error("--steps and --batches must be >= 1, --warmup >= 0")
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    params = count_parameters(get_preset(args.preset).build())
    print(f"torch {torch.__version__} on {name}; {args.preset}: {params:,} parameters; "
          f"{args.steps} timed steps after {args.warmup}")
    print("\n| batch | run | ms / step | steps/s | ratio to bare |\n|---:|---|---:|---:|---:|")
    for b in args.batches:
        data = make_data(args.preset).to(device)
        gen = torch.Generator().manual_seed(1)
        eager = make_config(args.preset, b, args.warmup + args.steps)
        batches = [draw_batch(data, b, eager, gen) for _ in range(args.warmup + args.steps)]
        rows = {"bare fwd+bwd+Adam": bare_step(eager, device),
                "TrainStep eager": train_step(eager, device)}
        for mode in args.modes:
            rows[f"TrainStep {mode}"] = train_step(replace(eager, compile=mode), device)
        bare = None
        for label, run in rows.items():
            seconds = timed(run, batches, args.warmup, device)
            bare = bare or seconds
            print(f"| {b} | {label} | {1e3 * seconds:.2f} | {1 / seconds:.1f} "
                  f"| {bare / seconds:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
