"""Retrieval throughput: fixed-point steps x ← softmax(−β‖x − y‖²) Y on Fashion-MNIST.

One run measures, on the same data and threads (defaults: 60,000 Fashion-MNIST training
images as patterns, 4,096 starts, 50 fixed-point iterations, float32):

1. memgen ``retrieve`` (fixed point, tol = 0 so that every start takes every step);
2. the same step one start at a time (the per-start loop a direct transcription of the
   update rule gives), timed on ``--n-loop`` starts for ``--loop-iter`` steps and scaled;
3. the float32 GEMM rate of ``torch.mm`` on this machine, interleaved with the above.

A step costs two GEMMs, (S×D)·(D×N) for the logits and (S×N)·(N×D) for the update:
4·S·N·D flops, the figure set against the GEMM rate.

    .venv/bin/python bench/attractors.py [--n-patterns 60000 --n-starts 4096 --iters 50
                                          --sigma 3 --repeats 2 --n-loop 32 --loop-iter 5]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from common import (gemm_peak, gemm_plan, interleaved_best, numpy_gemm_plan, print_blas_report,
                    set_threads, time_once)

from memgen.memory.attractors import Memory, retrieve
from memgen.probes.starts import noisy_starts


def load_patterns(n: int) -> torch.Tensor:
    from memgen.data import load_idx_images

    images = load_idx_images("fashion-mnist", "train").images[:n]
    return torch.from_numpy(np.ascontiguousarray(images.reshape(len(images), -1)))


def per_start_loop(memory: Memory, starts: torch.Tensor, iters: int) -> torch.Tensor:
    """The update rule transcribed literally: one start, one softmax, one sum at a time."""
    out = starts.clone()
    for i in range(len(out)):
        x = out[i]
        for _ in range(iters):
            sq = (x - memory.patterns).square().sum(1)
            w = torch.softmax(-memory.inverse_temperature * sq, dim=0)
            x = w @ memory.patterns
        out[i] = x
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-patterns", type=int, default=60_000)
    parser.add_argument("--n-starts", type=int, default=4096)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--sigma", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--n-loop", type=int, default=32)
    parser.add_argument("--loop-iter", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="threads of torch and numpy's BLAS alike")
    args = parser.parse_args(argv)
    set_threads(args.threads)

    patterns = load_patterns(args.n_patterns)
    memory = Memory.from_sigma(patterns, args.sigma)
    starts = noisy_starts(patterns, args.n_starts, args.sigma, torch.Generator().manual_seed(0))
    n, d = patterns.shape
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; patterns {n}×{d}, "
          f"{args.n_starts} starts, {args.iters} fixed-point steps, σ = {args.sigma}, float32")
    print_blas_report()

    gemms = gemm_plan() | numpy_gemm_plan()
    plan = dict(gemms)
    plan["memgen retrieve"] = lambda: retrieve(memory, starts, tol=0.0, max_iter=args.iters)
    best = interleaved_best(plan, args.repeats)
    peak = gemm_peak(best)
    flops = 4.0 * args.n_starts * n * d * args.iters
    ours = best["memgen retrieve"].seconds
    loop = time_once(lambda: per_start_loop(memory, starts[:args.n_loop], args.loop_iter))
    loop_scaled = loop.seconds * (args.n_starts / args.n_loop) * (args.iters / args.loop_iter)
    check = retrieve(memory, starts[:args.n_loop], tol=0.0, max_iter=args.loop_iter).endpoints
    agree = (per_start_loop(memory, starts[:args.n_loop], args.loop_iter) - check).abs().max()

    print(f"\n{'method':<34}{'seconds':>10}{'GFLOP/s':>10}{'% GEMM peak':>13}{'time/memgen':>13}")
    print("-" * 80)
    print(f"{'GEMM peak (best library, shape)':<34}{'':>10}{peak:>10.1f}{100.0:>12.1f}%{'-':>13}")
    print(f"{'memgen retrieve':<34}{ours:>10.2f}{flops / ours / 1e9:>10.1f}"
          f"{100 * flops / ours / 1e9 / peak:>12.1f}%{1.0:>13.2f}")
    print(f"{'per-start loop (naive, scaled)':<34}{loop_scaled:>10.1f}{flops / loop_scaled / 1e9:>10.1f}"
          f"{100 * flops / loop_scaled / 1e9 / peak:>12.1f}%{loop_scaled / ours:>13.1f}")
    print(f"\nper-start loop timed on {args.n_loop} starts × {args.loop_iter} steps "
          f"({loop.seconds:.2f} s) and scaled; max |difference| of endpoints there: {agree:.2e}")


if __name__ == "__main__":
    main()
