"""Streamed exact kNN benchmark: a synthetic set of a million 28×28 samples read from shards.

Task: the top-k Euclidean neighbours of ``--n-query`` queries among ``--n-ref`` reference
samples (defaults 10,000 × 1,000,000 × 784, top-5) that live on disk as ``.npy`` shards
(written once, seeded, to ``--dir``), searched chunk by chunk within ``--budget`` MiB by
``memgen.neighbours.stream_knn``. One run measures:

1. streamed search (memory-mapped shards, chunks of at most the budget);
2. the baselines, over the whole reference set loaded in RAM (``--no-baseline`` skips them
   when the set does not fit): memgen's in-memory ``knn_search``, and faiss-cpu's
   ``IndexFlatL2`` twice — with its defaults, and with its BLAS path forced
   (``distance_compute_blas_threshold = 0``; faiss's default sends fewer than 128,000
   query coordinates, e.g. 1,000 × 64, to a non-BLAS scan);
3. the float32 GEMM rate of ``torch.mm`` and ``numpy.matmul`` on the kNN block shape, the
   peak all are set against (nominal 2·n·m·d flops).

The BLAS of every library and the thread variables in force are printed; a library
baseline below half the GEMM peak is flagged "handicapped — check its BLAS" and gets no
speed-up. Every result is checked against the streamed one.

Peak resident memory is read from the kernel (``ru_maxrss``) after the streamed run, before
the baseline loads the set, and printed next to the stated bound (queries + 2 × budget +
the interpreter and torch, measured before the search). Neighbours are compared with the
in-memory result.

    .venv/bin/python bench/stream.py [--n-query 10000 --n-ref 1000000 --dim 784 --k 5
                                      --shard 50000 --budget 256 --dir /tmp/memgen-stream
                                      --threads N --repeats 2]

Each method runs ``--repeats`` times and keeps its best: the streamed search first (its
peak memory is read before the set is loaded), then the in-memory baselines.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np
import torch
from common import (gemm_name, gemm_plan, handicap, interleaved_best, numpy_gemm_plan,
                    print_blas_report, set_threads, speedup_cell, time_once)

from memgen.neighbours import knn_search, open_shards, stream_knn


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
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="threads of torch, numpy's BLAS and faiss alike")
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs of each method; the best is kept (the first one of a "
                             "process pays one-time costs that later methods would not)")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    t0 = time.perf_counter()
    paths = write_shards(Path(args.dir), args.n_ref, args.dim, args.shard)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(paths)} shards "
          f"of ≤ {args.shard} rows in {args.dir} (ready in {time.perf_counter() - t0:.0f} s)")
    print_blas_report()
    query = torch.from_numpy(np.random.default_rng(1).standard_normal(
        (args.n_query, args.dim), dtype=np.float32))
    budget = int(args.budget * 2**20)
    shapes = ((2048, 784, 8192), (min(args.n_query, 2048), args.dim, 8192))  # peak, this problem
    gemm = interleaved_best(gemm_plan(shapes) | numpy_gemm_plan(shapes), 2)
    rates = {shape: max(2 * np.prod(shape) / t.seconds for name, t in gemm.items()
                        if name.endswith(gemm_name(shape, ""))) for shape in shapes}
    peak, shaped = rates[shapes[0]], rates[shapes[1]]
    print(f"GEMM rate: {peak / 1e9:.1f} GFLOP/s at {shapes[0]}, {shaped / 1e9:.1f} GFLOP/s at "
          f"this problem's block shape {shapes[1]} (the rate baselines are checked against)")
    base_rss = rss_mib()
    shards = open_shards(paths)
    streamed = best_of(lambda: stream_knn(query, shards, args.k, memory_budget=budget,
                                          progress=True), args.repeats)
    stream_rss = rss_mib()
    flops = 2.0 * args.n_query * args.n_ref * args.dim
    rate = flops / streamed.seconds
    bound = base_rss + query.numel() * 4 / 2**20 + 2 * args.budget
    print(f"\nstreamed: {streamed.seconds:.2f} s = {streamed.seconds * 1e6 / args.n_ref:.2f} s "
          f"per million references ({args.n_query} queries), {rate / 1e9:.1f} GFLOP/s = "
          f"{100 * rate / peak:.1f} % of the GEMM peak ({peak / 1e9:.1f} GFLOP/s); peak RSS "
          f"{stream_rss:.0f} MiB (bound {bound:.0f} MiB: {base_rss:.0f} before the search + "
          f"queries + 2 × {args.budget:.0f} MiB)")
    if not args.no_baseline:
        compare_baselines(paths, query, args.k, streamed, flops, min(peak, shaped),
                          args.repeats)


def best_of(fn, repeats: int):
    """The fastest of ``repeats`` timed runs of fn (``common.time_once``)."""
    return min((time_once(fn) for _ in range(max(1, repeats))), key=lambda t: t.seconds)


def compare_baselines(paths, query, k: int, streamed, flops: float, peak: float,
                      repeats: int) -> None:
    """In-memory memgen and faiss on the loaded set, each checked against the streamed result
    and timed as it is (best of ``repeats``); peak: the GEMM rate at this problem's shape,
    the reference of the handicap check."""
    ref = torch.from_numpy(np.concatenate([np.load(p) for p in paths]))
    whole = best_of(lambda: knn_search(query, ref, k), repeats)
    same = torch.equal(whole.output.idx, streamed.output.idx) and torch.equal(
        whole.output.dist, streamed.output.dist)
    print(f"in memory: {whole.seconds:.2f} s ({flops / whole.seconds / 1e9:.1f} GFLOP/s), peak "
          f"RSS {rss_mib():.0f} MiB with the {ref.numel() * 4 / 2**30:.2f} GiB set loaded; "
          f"streamed / in-memory time {streamed.seconds / whole.seconds:.2f}; identical "
          f"neighbours and distances: {same}")
    try:
        import faiss  # optional: the faiss baselines
    except ImportError:
        print("faiss not installed: no faiss baselines (pip install faiss-cpu)")
        return
    def search():  # index construction included, as in the streamed and in-memory runs
        index = faiss.IndexFlatL2(ref.shape[1])
        index.add(ref.numpy())
        return index.search(query.numpy(), k)[1]

    default = faiss.cvar.distance_compute_blas_threshold
    for label, threshold in (("defaults", default), ("BLAS path forced", 0)):
        faiss.cvar.distance_compute_blas_threshold = threshold
        found = best_of(search, repeats)
        rate = flops / found.seconds
        note = handicap(rate, peak)
        agree = int((torch.from_numpy(found.output) != streamed.output.idx).any(dim=1).sum())
        print(f"faiss IndexFlatL2 ({label}): {found.seconds:.2f} s, {rate / 1e9:.1f} GFLOP/s = "
              f"{100 * rate / peak:.1f} % of the GEMM rate at this shape; faiss time / streamed time "
              f"{speedup_cell(found.seconds, streamed.seconds, note)}; rows whose neighbours "
              f"differ from the exact ones: {agree}{'; ' + note if note else ''}")
    faiss.cvar.distance_compute_blas_threshold = default


if __name__ == "__main__":
    main()
