"""Streamed exact kNN benchmark: a synthetic set of a million 28×28 samples read from shards.

Task: the top-k Euclidean neighbours of ``--n-query`` queries among ``--n-ref`` reference
samples (defaults 10,000 × 1,000,000 × 784, top-5) that live on disk as ``.npy`` shards
(written once, seeded, to ``--dir``), searched chunk by chunk within ``--budget`` MiB by
``memgen.metrics.stream.stream_knn``. One run measures:

1. streamed search (memory-mapped shards, chunks of at most the budget);
2. the baseline: memgen's in-memory ``knn_search`` over the whole reference set loaded
   in RAM (``--no-baseline`` skips it when the set does not fit);
3. the float32 GEMM rate of ``torch.mm`` on the kNN block shape, the peak both are set
   against (nominal 2·n·m·d flops).

Peak resident memory is read from the kernel (``ru_maxrss``) after the streamed run, before
the baseline loads the set, and printed next to the stated bound (queries + 2 × budget +
the interpreter and torch, measured before the search). Neighbours are compared with the
in-memory result.

    .venv/bin/python bench/stream.py [--n-query 10000 --n-ref 1000000 --dim 784 --k 5
                                      --shard 50000 --budget 256 --dir /tmp/memgen-stream]
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np
import torch
from common import gemm_name, gemm_plan, interleaved_best

from memgen.metrics.knn import knn_search
from memgen.metrics.shards import open_shards
from memgen.metrics.stream import stream_knn


def write_shards(folder: Path, n_ref: int, dim: int, shard: int) -> list[Path]:
    """Seeded float32 shards ref-00000.npy …; reused when already complete."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, start in enumerate(range(0, n_ref, shard)):
        path = folder / f"ref-{i:05d}.npy"
        rows = min(shard, n_ref - start)
        if not path.exists() or np.load(path, mmap_mode="r").shape != (rows, dim):
            rng = np.random.default_rng([7, i])
            np.save(path, rng.standard_normal((rows, dim), dtype=np.float32))
        paths.append(path)
    return paths


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-query", type=int, default=10_000)
    parser.add_argument("--n-ref", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=784)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--shard", type=int, default=50_000)
    parser.add_argument("--budget", type=float, default=256, help="MiB")
    parser.add_argument("--dir", default="/tmp/memgen-stream")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    paths = write_shards(Path(args.dir), args.n_ref, args.dim, args.shard)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(paths)} shards "
          f"of ≤ {args.shard} rows in {args.dir} (ready in {time.perf_counter() - t0:.0f} s)")
    query = torch.from_numpy(np.random.default_rng(1).standard_normal(
        (args.n_query, args.dim), dtype=np.float32))
    budget = int(args.budget * 2**20)
    shape = (2048, 784, 8192)  # a kNN block: queries × dims @ dims × references
    gemm = interleaved_best({gemm_name(shape): gemm_plan()[gemm_name(shape)]}, 2)
    peak = 2 * np.prod(shape) / gemm[gemm_name(shape)].seconds
    base_rss = rss_mib()
    shards = open_shards(paths)
    t0 = time.perf_counter()
    streamed = stream_knn(query, shards, args.k, memory_budget=budget, progress=True)
    t_stream = time.perf_counter() - t0
    stream_rss = rss_mib()
    flops = 2.0 * args.n_query * args.n_ref * args.dim
    bound = base_rss + query.numel() * 4 / 2**20 + 2 * args.budget
    print(f"\nstreamed: {t_stream:.1f} s = {t_stream * 1e6 / args.n_ref:.1f} s per million "
          f"references ({args.n_query} queries), {flops / t_stream / 1e9:.1f} GFLOP/s = "
          f"{100 * flops / t_stream / peak:.1f} % of the GEMM peak ({peak / 1e9:.1f} GFLOP/s); "
          f"peak RSS {stream_rss:.0f} MiB (bound {bound:.0f} MiB: {base_rss:.0f} before the "
          f"search + queries + 2 × {args.budget:.0f} MiB)")
    if args.no_baseline:
        return
    ref = torch.from_numpy(np.concatenate([np.load(p) for p in paths]))
    t0 = time.perf_counter()
    whole = knn_search(query, ref, args.k)
    t_mem = time.perf_counter() - t0
    same = torch.equal(whole.idx, streamed.idx) and torch.equal(whole.dist, streamed.dist)
    print(f"in memory: {t_mem:.1f} s ({flops / t_mem / 1e9:.1f} GFLOP/s), peak RSS "
          f"{rss_mib():.0f} MiB with the {ref.numel() * 4 / 2**30:.2f} GiB set loaded; "
          f"streamed / in-memory time {t_stream / t_mem:.2f}; identical neighbours: {same}")


if __name__ == "__main__":
    main()
