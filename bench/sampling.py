"""Sampling throughput: each sampler against the bare network forwards it is made of.

One run measures, per preset, on one fixed batch (defaults: batch 64, 100 steps for the
U-Nets on the DDPM ladder ``VPSchedule().sigmas(100)``, the 1000-level VE ladder of the toy):

1. N forwards of the network on one fixed input (N = the ladder's steps), eval mode, under
   ``torch.inference_mode`` as the samplers run, and the same under ``no_grad`` (a plain
   user loop); their "overhead vs floor" column is per forward, against the first;
2. every sampler through its denoiser (``EpsDenoiser`` for the U-Nets, ``ScoreDenoiser`` for
   the MLP), stochastic ones once with a ``StackedGenerator`` (per-sample numpy streams)
   and once with a ``torch.Generator``, each after its own floor ("… floor"): the very
   forwards it makes, on the inputs it gave them (recorded in one run beforehand), timed
   bare. A network's time depends on its inputs (the toy's sin and cos take longer on
   larger arguments), so a sampler is compared with its own forwards, not a fixed one's.

Overhead over the bare network forwards = sampler time / its floor's time − 1: for the best
run of each, and as the median over rounds of the ratio within a round (a slow stretch of
the machine slows both of a pair), printed after the table. The network, the denoiser's
``t_from_sigma`` (once per run: the ladder's times are computed before the loop) and the
StackedGenerator draws are also timed inside each sampler run ("in-run": overhead =
sampler time / time in the network − 1, the timers' own ~0.4 µs a call included).

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
from common import interleaved_runs, model_bench_args, paired_median

from memgen.diffusion.denoisers import EpsDenoiser, ScoreDenoiser
from memgen.diffusion.generate import initial_std
from memgen.diffusion.nets import count_parameters, get_preset
from memgen.diffusion.rng import StackedGenerator
from memgen.diffusion.samplers import get_sampler
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
    """Plan of callables, each returning ((Clock, samples), others' CPU share): the fixed
    forwards, then per sampler its own forwards replayed ("… floor") and the sampler."""
    net, cls, schedule, sigmas, x, t = setup(preset, batch, steps)
    seeds = [(0, i) for i in range(batch)]

    def forwards(mode, inputs):
        def go():
            clock = Clock()
            fwd = clock.wrap("net", net)
            with mode():
                for y, tt in inputs:
                    fwd(y, tt)
            return clock, None
        return go

    def sampler(name, make_gen, net=net):
        def go():
            clock = Clock()
            denoiser = cls(clock.wrap("net", net), timed_schedule(schedule, clock))
            out = get_sampler(name)(denoiser, x.clone(), sigmas, generator=make_gen(clock))
            return clock, out
        return go

    def inputs_of(name, make_gen) -> list:
        """The (x, t) of every forward the sampler makes, from one run of it."""
        inputs = []

        def recording(y, tt):
            inputs.append((y.clone(), tt.clone()))
            return net(y, tt)
        sampler(name, make_gen, recording)()
        ys, ts = (torch.stack(column) for column in zip(*inputs))  # one block each
        return list(zip(ys.unbind(0), ts.unbind(0)))

    stacked = lambda clock: TimedStacked(seeds, clock)  # noqa: E731
    torch_gen = lambda clock: torch.Generator().manual_seed(0)  # noqa: E731
    none = lambda clock: None  # noqa: E731
    fixed = [(x, t)] * steps
    plan = {f"{preset} forwards": forwards(torch.inference_mode, fixed),
            f"{preset} forwards no_grad": forwards(torch.no_grad, fixed)}
    samplers = ([("euler_maruyama", "stacked", stacked), ("euler_maruyama", "torch", torch_gen)]
                if cls is ScoreDenoiser else
                [("ddpm", "stacked", stacked), ("ddpm", "torch", torch_gen), ("ddim", "", none),
                 ("heun", "", none)])
    with torch.no_grad():  # warm-up: the allocator's cache and every code path
        for _ in range(5):
            net(x, t)
    get_sampler("heun")(cls(net, schedule), x.clone(), sigmas[-3:])
    for name, gen_name, make_gen in samplers:
        label = f"{preset} {name} {gen_name}".rstrip()
        plan[f"{label} floor"] = forwards(torch.inference_mode, inputs_of(name, make_gen))
        plan[label] = sampler(name, make_gen)
    return {name: with_others_cpu(fn) for name, fn in plan.items()}


def report(runs: dict, batch: int) -> None:
    """Markdown table; overheads in % of the network time, rest = sampler arithmetic. A
    sampler's overhead is over its own floor, the row before it: the same forwards, on the
    inputs it gave them (a network's time can depend on them: sin and cos of the toy's
    time embedding take longer on larger arguments), timed bare."""
    best = {name: min(timings, key=lambda t: t.seconds) for name, timings in runs.items()}
    print("\n| run | forwards | seconds | ms / forward | images/s | overhead vs floor "
          "| in-run overhead | of which noise | t_from_sigma | rest | others' CPU |")
    print("|---|" + "---:|" * 10)
    base, floors = None, {}
    for name, timing in best.items():
        (clock, _), others = timing.output
        n, net_s, total = clock.calls["net"], clock.seconds["net"], timing.seconds
        if name.endswith((" forwards", " no_grad", " floor")):  # bare forwards
            base = base or total / n  # per forward, the fixed input's under inference_mode
            floors[name] = total
            print(f"| {name} | {n} | {total:.3f} | {1e3 * total / n:.2f} | – "
                  f"| {100 * (total / n - base) / base:.1f} % |" + " – |" * 4
                  + f" {100 * others:.0f} % |")
            continue
        floor = floors[f"{name} floor"]
        noise, t_conv = clock.seconds["noise"], clock.seconds["t"]
        pct = lambda s, base=net_s: f"{100 * s / base:.1f} %"  # noqa: E731
        print(f"| {name} | {n} | {total:.3f} | {1e3 * net_s / n:.2f} | {batch / total:.1f} "
              f"| {pct(total - floor, floor)} | {pct(total - net_s)} | {pct(noise)} "
              f"| {pct(t_conv)} | {pct(total - net_s - noise - t_conv)} | {100 * others:.0f} % |")
    print()
    for name, timing in best.items():
        if f"{name} floor" in floors:
            floor = floors[f"{name} floor"]
            paired = paired_median(runs[name], runs[f"{name} floor"]) - 1
            print(f"{name}: overhead over its bare network forwards "
                  f"{100 * (timing.seconds - floor) / floor:.1f} % (best of each), "
                  f"{100 * paired:.1f} % (median of {len(runs[name])} paired rounds)")


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
        report(interleaved_runs(plan, args.repeats), args.batch)


if __name__ == "__main__":
    main()
