"""Training throughput: ``memgen.diffusion.training.train`` against the bare forward +
backward + optimizer step.

One run measures, per preset (defaults: fmnist-cpu-16 and fmnist-cpu-28 with vp_eps,
toy-mlp with ve_score, batch 128, 1,024 synthetic training points — the values do not
change the cost), after a 2-iteration warm-up call of ``train``:

1. ``train(config, data, tmpdir)``: the wall time of the whole call (building the model,
   the loop, the final checkpoint) and the loop's steady rate from its own log (records
   every iterations/4 steps; the rate is taken between the first and the last record);
2. a replica of the loop body (``train_step.TrainStep``) with each phase timed: batch
   draw (several steps' batches at a time, as the loop draws them, spread over those
   steps), forward (with the loss), zeroing the gradients, backward, gradient clipping,
   Adam step, EMA update. Forward + backward + Adam step is the bare cost of a step; the rest is the
   overhead of our loop. The headline: the loop's steady time per step (1.) over that
   bare cost, "loop overhead over bare forward+backward+optimizer step".

    .venv/bin/python bench/training.py [--presets fmnist-cpu-16 fmnist-cpu-28 toy-mlp
                                        --batch 128 --iters N --repeats 1]

``--iters`` replaces the per-preset defaults (40, 20 and 2,000 timed iterations, chosen to
keep the whole run near two minutes on 2 cores; the toy's steps take ~1 ms, so it needs
many for a stable rate); the replica runs half as many.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from common import interleaved_runs, model_bench_args
from sampling import with_others_cpu

from memgen.diffusion.nets import count_parameters, get_preset
from memgen.diffusion.train_step import TrainStep
from memgen.diffusion.training import LOG, TrainConfig, ahead_steps, draw_batch, new_state, train

DEFAULT_ITERS = {"fmnist-cpu-16": 40, "fmnist-cpu-28": 20, "toy-mlp": 2000}
PHASES = ("data", "forward", "zero_grad", "backward", "clip", "adam", "ema")
BARE = ("forward", "backward", "adam")  # the bare step: what any training loop must run


def make_config(preset: str, batch: int, iterations: int) -> TrainConfig:
    net = get_preset(preset)
    objective = "ve_score" if net.kind == "mlp" else "vp_eps"
    return TrainConfig(preset=preset, objective=objective, iterations=iterations,
                       batch_size=batch, log_every=max(1, iterations // 4),
                       checkpoint_every=iterations)  # only the final checkpoint


def make_data(preset: str, k: int = 1024) -> torch.Tensor:
    net = get_preset(preset)
    shape = (k, net.dim) if net.kind == "mlp" else (k, net.channels, net.image_size,
                                                     net.image_size)
    return torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 2 - 1


def train_run(config: TrainConfig, data: torch.Tensor):
    """Run ``train`` in a fresh temp dir; return its steady loop rate from the log."""
    def go():
        with tempfile.TemporaryDirectory() as out:
            train(config, data, out, progress=False)
            log = [json.loads(ln) for ln in (Path(out) / LOG).read_text().splitlines()]
        steps, seconds = log[-1]["step"] - log[0]["step"], log[-1]["seconds"] - log[0]["seconds"]
        return {"loop it/s": steps / seconds}
    return go


def replica_run(config: TrainConfig, data: torch.Tensor, steps: int, warm: int = 2):
    """The body of ``memgen.diffusion.train_step.TrainStep`` (a step of ``train``'s loop),
    each phase timed; seconds per step by phase."""
    def go():
        state = new_state(config, data.device)
        step = TrainStep(config, state, state.model.train(), data.device)
        c, ahead = config, []
        spent = defaultdict(float)
        for i in range(warm + steps):
            marks = [time.perf_counter()]
            if not ahead:  # as the loop's _batches: several steps' batches at a time
                ahead = [draw_batch(data, c.batch_size, c, state.generator)
                         for _ in range(ahead_steps(data, c.batch_size))][::-1]
            batch = ahead.pop()
            marks.append(time.perf_counter())
            loss = step.forward(*batch)
            marks.append(time.perf_counter())
            step.zero_grad()
            marks.append(time.perf_counter())
            loss.backward()
            marks.append(time.perf_counter())
            step.clip()
            marks.append(time.perf_counter())
            state.optimizer.step()
            marks.append(time.perf_counter())
            step.update_ema()
            marks.append(time.perf_counter())
            if i >= warm:
                for phase, a, b in zip(PHASES, marks, marks[1:]):
                    spent[phase] += (b - a) / steps
        return dict(spent)
    return go


def plain_run(config: TrainConfig, data: torch.Tensor, steps: int, warm: int = 2):
    """The training loop as one writes it with torch alone: the objective's loss,
    ``zero_grad``, backward, torch's fused Adam ``step`` (no clipping, no EMA); the same
    batches as the replica, drawn before each block of steps. Seconds per step."""
    def go():
        model = replace(config.net, seed=config.seed).build().to(data.device).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, fused=True)
        loss_fn, gen = config.parameterization().loss, torch.Generator().manual_seed(1)
        batches = [draw_batch(data, config.batch_size, config, gen)
                   for _ in range(warm + steps)]
        for i, batch in enumerate(batches):
            if i == warm:
                t0 = time.perf_counter()
            loss = loss_fn(model, *batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return {"plain s/step": (time.perf_counter() - t0) / steps}
    return go


def report(rows: list[dict]) -> None:
    print("\n| preset | params | train() call it/s | loop it/s (log) | replica it/s "
          "| bare fwd+bwd+Adam it/s | plain torch loop it/s | loop overhead over bare "
          "| replica overhead over bare | loop over plain | others' CPU |\n|---|"
          + "---:|" * 10)
    for r in rows:
        p = r["phases"]
        step, bare, plain = sum(p.values()), sum(p[k] for k in BARE), r["plain s/step"]
        loop = 1 / r["loop it/s"]
        print(f"| {r['preset']} | {r['params']:,} | {r['call it/s']:.2f} | {r['loop it/s']:.2f} "
              f"| {1 / step:.2f} | {1 / bare:.2f} | {1 / plain:.2f} "
              f"| {100 * (loop - bare) / bare:.1f} % | {100 * (step - bare) / bare:.1f} % "
              f"| {100 * (loop - plain) / plain:.1f} % | {r['others']} |")
    print()
    for r in rows:
        p = r["phases"]
        bare, loop, plain = sum(p[k] for k in BARE), 1 / r["loop it/s"], r["plain s/step"]
        print(f"{r['preset']}: loop overhead over bare forward+backward+optimizer step "
              f"{100 * (loop - bare) / bare:.1f} % ({1e3 * loop:.3f} ms/step against "
              f"{1e3 * bare:.3f} ms); over the plain torch loop (fused Adam, no clipping, "
              f"no EMA: {1e3 * plain:.3f} ms) {100 * (loop - plain) / plain:.1f} %; median of "
              f"{r['rounds']} paired rounds: {100 * r['paired'][0]:.1f} % over bare, "
              f"{100 * r['paired'][1]:.1f} % over plain")
    print("\nms per step, by phase (replica)\n\n| preset | " + " | ".join(PHASES)
          + " | total |\n|---|" + "---:|" * (len(PHASES) + 1))
    for r in rows:
        p = r["phases"]
        print(f"| {r['preset']} | " + " | ".join(f"{1e3 * p[k]:.2f}" for k in PHASES)
              + f" | {1e3 * sum(p.values()):.2f} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=None)
    args = model_bench_args(parser, argv, presets=DEFAULT_ITERS, batch=128)
    rows = []
    for preset in args.presets:
        iters = args.iters or DEFAULT_ITERS.get(preset, 40)
        data = make_data(preset)
        config = make_config(preset, args.batch, iters)
        train_run(make_config(preset, args.batch, 2), data)()  # warm-up
        half = max(1, iters // 2)
        plan = {f"{preset} train()": with_others_cpu(train_run(config, data)),
                f"{preset} replica": with_others_cpu(replica_run(config, data, half)),
                f"{preset} plain": with_others_cpu(plain_run(config, data, half))}
        runs = interleaved_runs(plan, args.repeats)
        best = {name: min(timings, key=lambda t: t.seconds) for name, timings in runs.items()}
        (log, others_t), (phases, others_r), (plain, _) = (best[k].output for k in plan)
        # per round: train()'s loop against the bare step and the plain loop of that round
        rounds = [(1 / a.output[0]["loop it/s"], sum(b.output[0][k] for k in BARE),
                   c.output[0]["plain s/step"]) for a, b, c in zip(*runs.values())]
        rows.append({"preset": preset, "params": count_parameters(get_preset(preset).build()),
                     "call it/s": iters / best[f"{preset} train()"].seconds, **log, **plain,
                     "phases": phases, "others": f"{100 * others_t:.0f} / {100 * others_r:.0f} %",
                     "paired": [float(np.median([r[0] / r[k] - 1 for r in rounds]))
                                for k in (1, 2)], "rounds": len(rounds)})
    report(rows)


if __name__ == "__main__":
    main()
