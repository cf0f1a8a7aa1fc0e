"""Timing helpers shared by the benchmarks: interleaved best-of runs, stolen CPU time, the
machine's float32 GEMM rate measured in the same run, the BLAS and threads every library
runs with, and the check that flags a baseline too slow to be an honest comparison."""

from __future__ import annotations

import argparse
import os
import re
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

GEMM_SHAPES = ((4096, 4096, 4096), (2048, 784, 8192))  # (a, b, c): (a×b) @ (b×c)
HANDICAP = 0.5  # a library baseline below this share of the GEMM peak is not a fair baseline
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_DYNAMIC",
                    "MKL_ENABLE_INSTRUCTIONS", "MKL_DEBUG_CPU_TYPE", "OPENBLAS_CORETYPE",
                    "OMP_PROC_BIND", "OMP_PLACES", "KMP_AFFINITY", "GOMP_CPU_AFFINITY",
                    "VECLIB_MAXIMUM_THREADS")


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


def interleaved_runs(plan: dict[str, Callable[[], object]], repeats: int
                     ) -> dict[str, list[Timing]]:
    """Run every callable of ``plan`` in turn, ``repeats`` rounds; every run's Timing, in
    round order (run k of two callables are neighbours in time: their ratio is paired)."""
    runs: dict[str, list[Timing]] = {name: [] for name in plan}
    for rnd in range(repeats):
        for name, fn in plan.items():
            timing = time_once(fn)
            print(f"  round {rnd + 1}/{repeats} {name:<32s} {timing.seconds:8.3f} s"
                  f"  (steal {100 * timing.steal:4.1f}%)", flush=True)
            runs[name].append(timing)
    return runs


def interleaved_best(plan: dict[str, Callable[[], object]], repeats: int) -> dict[str, Timing]:
    """Run every callable of ``plan`` in turn, ``repeats`` rounds; keep each one's best run."""
    return {name: min(timings, key=lambda t: t.seconds)
            for name, timings in interleaved_runs(plan, repeats).items()}


def paired_median(runs: list[Timing], base: list[Timing]) -> float:
    """Median over rounds of runs[k].seconds / base[k].seconds: the ratio of two callables
    timed side by side in each round, which a slow stretch of the machine slows alike."""
    return float(np.median([a.seconds / b.seconds for a, b in zip(runs, base)]))


def gemm_plan(shapes=GEMM_SHAPES) -> dict[str, Callable[[], object]]:
    """torch.mm calls on the shapes (a, b, c) of (a×b) @ (b×c), inputs allocated once,
    warmed up."""
    gen = torch.Generator().manual_seed(0)
    plan = {}
    for a, b, c in shapes:
        x, y = torch.randn(a, b, generator=gen), torch.randn(b, c, generator=gen)
        out = torch.empty(a, c)
        plan[gemm_name((a, b, c))] = lambda x=x, y=y, out=out: torch.mm(x, y, out=out)
    for fn in plan.values():
        fn()
    return plan


def gemm_name(shape: tuple[int, int, int], library: str = "torch.mm") -> str:
    """Plan and table label of the GEMM (a×b) @ (b×c)."""
    a, b, c = shape
    return f"{library} {a}x{b} @ {b}x{c}"


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
    print_blas_report()
    return args


# ---------------------------------------------------------------------------- honesty


def blas_report() -> list[str]:
    """One line per library in use: its BLAS, that BLAS's version and thread count; then the
    thread and BLAS variables of the environment (set or not)."""
    lines = [f"torch {torch.__version__}: {_torch_blas()}, {torch.get_num_threads()} threads"]
    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    numpy_pools = _pools("numpy")
    lines.append(f"numpy {np.__version__}: {blas.get('name')} {blas.get('version')}, "
                 f"{_threads(numpy_pools)} threads")
    try:
        import faiss  # optional: the faiss baselines
    except ImportError:
        lines.append("faiss: not installed")
    else:
        lines.append(f"faiss {faiss.__version__}: {_pool_names(_pools('faiss'))}, "
                     f"{faiss.omp_get_max_threads()} OpenMP threads")
    variables = " ".join(f"{name}={os.environ.get(name, 'unset')}" for name in THREAD_VARIABLES)
    lines.append(f"environment: {variables}")
    return lines


def print_blas_report() -> None:
    """Print :func:`blas_report` under a heading."""
    print("BLAS and threads in this run:")
    for line in blas_report():
        print(f"  {line}")


def _torch_blas() -> str:
    config = torch.__config__.show()
    blas = re.findall(r"BLAS_INFO=(\w+)", config)
    mkl = re.findall(r"Math Kernel Library Version ([\w.\-]+)", config)
    name = blas[0] if blas else "unknown BLAS"
    return f"{name} {mkl[0]}" if name == "mkl" and mkl else name


def _pools(library: str) -> list[dict]:
    """threadpoolctl's records of the BLAS and OpenMP libraries loaded from a package's folder."""
    from threadpoolctl import threadpool_info  # bench-only dependency (the dev extra)

    return [pool for pool in threadpool_info() if f"/{library}" in pool["filepath"]]


def _pool_names(pools: list[dict]) -> str:
    blas = [f"{p['internal_api']} {p.get('version')} ({p.get('architecture')}, "
            f"{p['num_threads']} threads)" for p in pools if p["user_api"] == "blas"]
    return ", ".join(blas) or "no BLAS found"


def _threads(pools: list[dict]) -> str:
    counts = {p["num_threads"] for p in pools if p["user_api"] == "blas"}
    return "/".join(str(c) for c in sorted(counts)) or "?"


def gemm_peak(best: dict[str, Timing], shapes=GEMM_SHAPES) -> float:
    """GFLOP/s of the fastest GEMM timed in best: any library (torch.mm, numpy.matmul), any
    of the shapes."""
    rates = [2.0 * a * b * c / best[name].seconds / 1e9 for a, b, c in shapes
             for name in (gemm_name((a, b, c)), gemm_name((a, b, c), "numpy.matmul"))
             if name in best]
    return max(rates)


def numpy_gemm_plan(shapes=GEMM_SHAPES) -> dict[str, Callable[[], object]]:
    """numpy.matmul on the shapes (a, b, c) (numpy's own BLAS), warmed up."""
    rng = np.random.default_rng(0)
    plan = {}
    for a, b, c in shapes:
        x = rng.standard_normal((a, b), dtype=np.float32)
        y = rng.standard_normal((b, c), dtype=np.float32)
        out = np.empty((a, c), dtype=np.float32)
        plan[gemm_name((a, b, c), "numpy.matmul")] = \
            lambda x=x, y=y, out=out: np.matmul(x, y, out=out)
    for fn in plan.values():
        fn()
    return plan


def set_threads(threads: int) -> None:
    """The same thread count for torch, numpy's BLAS and faiss (when installed)."""
    from threadpoolctl import threadpool_limits  # bench-only dependency (the dev extra)

    torch.set_num_threads(threads)
    threadpool_limits(limits=threads, user_api="blas")
    try:
        import faiss  # optional: the faiss baselines
    except ImportError:
        return
    faiss.omp_set_num_threads(threads)


def handicap(rate: float, peak: float) -> str:
    """'' for a baseline at ≥ HANDICAP of the GEMM peak measured in the same run, else the
    flag under which its time must not be read as memgen's speed-up."""
    if rate >= HANDICAP * peak:
        return ""
    return f"handicapped — check its BLAS ({100 * rate / peak:.0f} % of the GEMM peak)"


def speedup_cell(other_seconds: float, memgen_seconds: float, note: str) -> str:
    """The time ratio other / memgen, or 'n/a' for a flagged (handicapped) baseline."""
    return "n/a" if note else f"{other_seconds / memgen_seconds:.2f}"
