"""Sampling throughput: each sampler against the bare network forwards it is made of.

One run measures, per preset, on one fixed batch (defaults: batch 64, 100 steps for the
U-Nets on the DDPM ladder ``VPSchedule().sigmas(100)``, the 1000-level VE ladder of the toy):

1. the floor: N forwards of the network (N = the ladder's steps) in eval mode, no_grad;
2. every sampler through its denoiser (``EpsDenoiser`` for the U-Nets, ``ScoreDenoiser`` for
   the MLP), stochastic ones once with a ``StackedGenerator`` (per-sample numpy streams,
   drawn by the samplers in blocks of steps) and once with a ``torch.Generator``.

Overhead over the bare network forwards = (sampler time − forwards × floor per forward)/
(forwards × floor per forward) (Heun makes 2N − 1 forwards), printed per run after the
table. The network, the denoiser's ``t_from_sigma`` (once per run: the ladder's times are
computed before the loop) and the StackedGenerator draws are also timed inside each
sampler run ("in-run": overhead = sampler time / time in the network − 1), which splits
it without run-to-run noise.

    .venv/bin/python bench/sampling.py [--presets fmnist-cpu-16 fmnist-cpu-28 toy-mlp
                                        --batch 64 --steps 100 --mlp-steps 1000 --repeats 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import time
from collections import defaultdict

import torch
from common import interleaved_best, model_bench_args

from memgen.diffusion.denoisers import EpsDenoiser, ScoreDenoiser
from memgen.diffusion.generate import initial_std
from memgen.diffusion.nets import count_parameters, get_preset
from memgen.diffusion.samplers import StackedGenerator, get_sampler
from memgen.diffusion.schedules import VESchedule, VPSchedule


class Clock:
    """Seconds and calls per label, accumulated by wrapped callables."""

    def __init__(self):
        self.seconds, self.calls = defaultdict(float), defaultdict(int)

    def wrap(self, label, fn):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            self.seconds[label] += time.perf_counter() - t0
            self.calls[label] += 1
            return out
        return timed


def with_others_cpu(fn):
    """fn wrapped to return (output, share of the machine's CPU time that other processes
    used meanwhile): /proc/stat busy ticks less this process's own CPU time."""
    def busy() -> float:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:8]]
        return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # less idle and iowait

    def own() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def go():
        b0, o0, t0 = busy(), own(), time.perf_counter()
        out = fn()
        wall = time.perf_counter() - t0
        return out, max(0.0, (busy() - b0) - (own() - o0)) / (os.cpu_count() * wall)
    return go


def timed_schedule(schedule, clock: Clock):
    """A copy of the schedule (of its own class, as the parameterizations require) whose
    ``t_from_sigma``, the denoiser's only call into it, is timed."""
    timed = dataclasses.replace(schedule)
    object.__setattr__(timed, "t_from_sigma", clock.wrap("t", schedule.t_from_sigma))
    return timed


class TimedStacked(StackedGenerator):
    """StackedGenerator whose draws are timed (``randn`` is what the samplers reach)."""

    def __init__(self, seeds, clock: Clock):
        super().__init__(seeds)
        self.randn = clock.wrap("noise", self.randn)


def setup(preset: str, batch: int, steps: int):
    """(net, denoiser class, schedule, ladder, fixed batch, fixed t) of one preset."""
    torch.manual_seed(0)  # the U-Net draws its init from the global RNG; weights don't matter
    config = get_preset(preset)
    net = config.build().eval()
    if config.kind == "mlp":
        schedule, cls, t = VESchedule(), ScoreDenoiser, 0.5
        shape, sigmas = (batch, config.dim), VESchedule().sigmas(steps)
    else:
        schedule, cls, t = VPSchedule(), EpsDenoiser, 500.0
        shape, sigmas = (batch, config.channels, config.image_size, config.image_size), \
            VPSchedule().sigmas(steps)
    gen = torch.Generator().manual_seed(0)
    x = initial_std(schedule, float(sigmas[0])) * torch.randn(shape, generator=gen)
    return net, cls, schedule, sigmas, x, torch.full((batch,), t)


def runs(preset: str, batch: int, steps: int) -> dict:
    """Plan of callables, each returning ((Clock, samples), others' CPU share)."""
    net, cls, schedule, sigmas, x, t = setup(preset, batch, steps)
    seeds = [(0, i) for i in range(batch)]

    @torch.no_grad()
    def forwards():
        clock = Clock()
        fwd = clock.wrap("net", net)
        for _ in range(steps):
            fwd(x, t)
        return clock, None

    def sampler(name, make_gen):
        def go():
            clock = Clock()
            denoiser = cls(clock.wrap("net", net), timed_schedule(schedule, clock))
            out = get_sampler(name)(denoiser, x.clone(), sigmas, generator=make_gen(clock))
            return clock, out
        return go

    stacked = lambda clock: TimedStacked(seeds, clock)  # noqa: E731
    torch_gen = lambda clock: torch.Generator().manual_seed(0)  # noqa: E731
    plan = {f"{preset} forwards": forwards}
    if cls is ScoreDenoiser:
        plan[f"{preset} euler_maruyama stacked"] = sampler("euler_maruyama", stacked)
        plan[f"{preset} euler_maruyama torch"] = sampler("euler_maruyama", torch_gen)
    else:
        plan[f"{preset} ddpm stacked"] = sampler("ddpm", stacked)
        plan[f"{preset} ddpm torch"] = sampler("ddpm", torch_gen)
        plan[f"{preset} ddim"] = sampler("ddim", lambda clock: None)
        plan[f"{preset} heun"] = sampler("heun", lambda clock: None)
    with torch.no_grad():  # warm-up: the allocator's cache and every code path
        for _ in range(5):
            net(x, t)
    get_sampler("heun")(cls(net, schedule), x.clone(), sigmas[-3:])
    return {name: with_others_cpu(fn) for name, fn in plan.items()}


def report(best: dict, batch: int) -> None:
    """Markdown table; overheads in % of the network time, rest = sampler arithmetic."""
    print("\n| run | forwards | seconds | ms / forward | images/s | overhead vs floor "
          "| in-run overhead | of which noise | t_from_sigma | rest | others' CPU |")
    print("|---|" + "---:|" * 10)
    floor = None
    for name, timing in best.items():
        (clock, _), others = timing.output
        n, net_s, total = clock.calls["net"], clock.seconds["net"], timing.seconds
        if floor is None:  # the forwards run comes first
            floor = total / n
            print(f"| {name} | {n} | {total:.3f} | {1e3 * floor:.2f} |" + " – |" * 6
                  + f" {100 * others:.0f} % |")
            continue
        noise, t_conv = clock.seconds["noise"], clock.seconds["t"]
        pct = lambda s, base=net_s: f"{100 * s / base:.1f} %"  # noqa: E731
        print(f"| {name} | {n} | {total:.3f} | {1e3 * net_s / n:.2f} | {batch / total:.1f} "
              f"| {pct(total - n * floor, n * floor)} | {pct(total - net_s)} | {pct(noise)} "
              f"| {pct(t_conv)} | {pct(total - net_s - noise - t_conv)} | {100 * others:.0f} % |")
    print()
    for name, timing in list(best.items())[1:]:
        n = timing.output[0][0].calls["net"]
        print(f"{name}: overhead over bare network forwards "
              f"{100 * (timing.seconds - n * floor) / (n * floor):.1f} %")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="U-Net ladder steps")
    parser.add_argument("--mlp-steps", type=int, default=1000, help="VE ladder levels (MLP)")
    args = model_bench_args(parser, argv, batch=64,
                            presets=["fmnist-cpu-16", "fmnist-cpu-28", "toy-mlp"])
    for preset in args.presets:
        mlp = get_preset(preset).kind == "mlp"
        steps = args.mlp_steps if mlp else args.steps
        print(f"\n{preset}: {count_parameters(get_preset(preset).build()):,} parameters, "
              f"{steps} {'levels' if mlp else 'steps'}")
        plan = runs(preset, args.batch, steps)
        report(interleaved_best(plan, args.repeats), args.batch)


if __name__ == "__main__":
    main()
