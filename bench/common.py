"""Timing helpers shared by the benchmarks: interleaved best-of runs, stolen CPU time,
and the machine's float32 GEMM rate measured in the same run."""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from typing import Callable

import torch

GEMM_SHAPES = ((4096, 4096, 4096), (2048, 784, 8192))  # (a, b, c): (a×b) @ (b×c)


@dataclass(frozen=True)
class Timing:
    """Best wall time of a callable, the CPU share stolen during that run, and its output."""

    seconds: float
    steal: float
    output: object = None


def cpu_ticks() -> tuple[int, int]:
    """(steal, total) CPU ticks from /proc/stat; (0, 0) where it is unavailable."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def time_once(fn: Callable[[], object]) -> Timing:
    """Wall time of one call and the share of CPU ticks stolen by the hypervisor meanwhile."""
    steal0, total0 = cpu_ticks()
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    steal1, total1 = cpu_ticks()
    return Timing(seconds, (steal1 - steal0) / max(total1 - total0, 1), out)


def interleaved_best(plan: dict[str, Callable[[], object]], repeats: int) -> dict[str, Timing]:
    """Run every callable of ``plan`` in turn, ``repeats`` rounds; keep each one's best run."""
    best: dict[str, Timing] = {}
    for rnd in range(repeats):
        for name, fn in plan.items():
            timing = time_once(fn)
            print(f"  round {rnd + 1}/{repeats} {name:<32s} {timing.seconds:8.3f} s"
                  f"  (steal {100 * timing.steal:4.1f}%)", flush=True)
            if name not in best or timing.seconds < best[name].seconds:
                best[name] = timing
    return best


def gemm_plan() -> dict[str, Callable[[], object]]:
    """torch.mm calls on the shapes of GEMM_SHAPES, inputs allocated once, warmed up."""
    gen = torch.Generator().manual_seed(0)
    plan = {}
    for a, b, c in GEMM_SHAPES:
        x, y = torch.randn(a, b, generator=gen), torch.randn(b, c, generator=gen)
        out = torch.empty(a, c)
        plan[gemm_name((a, b, c))] = lambda x=x, y=y, out=out: torch.mm(x, y, out=out)
    for fn in plan.values():
        fn()
    return plan


def gemm_name(shape: tuple[int, int, int]) -> str:
    """Plan and table label of the GEMM (a×b) @ (b×c)."""
    a, b, c = shape
    return f"torch.mm {a}x{b} @ {b}x{c}"


def model_bench_args(parser: argparse.ArgumentParser, argv, *, presets, batch: int):
    """Arguments shared by the model benchmarks; sets the torch thread count and prints it."""
    parser.add_argument("--presets", nargs="+", default=list(presets))
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.2f}; batch {args.batch}, float32")
    return args
