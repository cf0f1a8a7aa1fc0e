"""Exact kNN benchmark: memgen ``knn_search`` vs faiss ``IndexFlatL2`` vs the broadcast reference.

One run measures, on the same data and threads (defaults: Fashion-MNIST, the 10,000 test
images as queries against the 60,000 training images, 784 dims, top-5):

1. memgen ``knn_search`` (best of ``--repeats`` after a warm-up on a small slice);
2. faiss-cpu ``IndexFlatL2``: index construction and exact search, as memgen's one call
   prepares its references and searches (skipped if faiss is not installed);
3. the public reference code's method, one query at a time:
   ``topk(norm(query[None] - ref, dim=1), k, largest=False)``, timed on a subset of
   ``--n-sub`` queries and scaled linearly to all queries;
4. the float32 GEMM rate of ``torch.mm`` and of ``numpy.matmul`` (a large square product
   and a kNN-block shape): the best is the GEMM peak that every rate is set against.

Next to the figures it prints the BLAS of torch, numpy and faiss, their thread counts and
the thread / BLAS variables in force. A library baseline below half the GEMM peak is
flagged "handicapped — check its BLAS" and no speed-up over it is reported. A last,
separate run times memgen's phases (centring, bfloat16 rows, GEMM, group minima,
selection, refinement, bounds and certification with the float64 fallback) by wrapping
its functions.

Every method is credited the same nominal 2·n·m·d flops; where memgen screens in bfloat16
(a CPU with AMX: ``knn_search``'s ``bf16_screen``) its rate can exceed the float32 GEMM
peak, and its GEMM phase holds both its bfloat16 and float32 GEMMs. The repeats are interleaved
(GEMM, memgen, faiss, GEMM, memgen, faiss, ...) so a slow spell on a shared machine hits
all of them; the share of CPU time stolen by the hypervisor is printed with each best run.

Neighbours are compared with memgen's row by row. A differing row is classified with exact
float64 distances ‖q − r‖²: a *tie* when both index lists have the same sorted distances,
*other worse* when the other method's sorted distances are elementwise ≥ memgen's (memgen at
least as correct), *memgen worse* otherwise (an error in memgen's exact search).

    .venv/bin/python bench/knn.py [--n-query 10000 --n-ref 60000 --dim 784 --k 5
                                   --data fmnist|random --threads N --repeats 3 --n-sub 200]
"""

from __future__ import annotations

import argparse
import platform
from dataclasses import dataclass

import numpy as np
import torch
import importlib
import time
from contextlib import contextmanager

from common import (GEMM_SHAPES, Timing, gemm_name, gemm_plan, handicap, interleaved_best,
                    numpy_gemm_plan, print_blas_report, set_threads, speedup_cell, time_once)

from memgen.neighbours import knn_search

# the engine's modules, whose functions the phase timer wraps wherever they are bound
ENGINE = [importlib.import_module(f"memgen.neighbours.{name}")
          for name in ("exact", "screen", "refine", "bf16")]
SCREEN, BF16 = ENGINE[1], ENGINE[3]
PHASES = {  # phase: functions of memgen.neighbours whose time it is (exclusive of the others)
    "centring and norms": ("build", "queries"),
    "bfloat16 rows": ("Bf16Screen.of", "Bf16Screen.queries"),
    "GEMM (bfloat16 and float32)": ("mm",),
    "group minima": ("_scores",),
    "selection (top-c merges)": ("_smallest", "_merge_block"),
    "float64 refinement": ("refine_candidates", "refine_widths"),
    "bounds and certification": ("_certified", "float64_fallback", "Bf16Screen.slack",
                                 "Bf16Screen.lower", "Bf16Screen.width"),
}


@dataclass(frozen=True)
class Agreement:
    """Rows whose neighbour lists differ from memgen's, classified by exact distances."""

    n_rows: int
    n_diff: int
    n_tie: int
    n_other_worse: int
    n_memgen_worse: int

    def verdict(self) -> str:
        """'yes' when all rows match; otherwise the counts."""
        if self.n_diff == 0:
            return "yes"
        return (f"no: {self.n_diff} rows ({self.n_tie} ties, {self.n_other_worse} other worse, "
                f"{self.n_memgen_worse} memgen worse)")


@dataclass(frozen=True)
class Row:
    """One line of the final table."""

    method: str
    seconds: float
    gflops: float
    vs_memgen: str  # time / memgen time; "-" for GEMM rows, "n/a" for handicapped baselines
    pct_peak: float
    identical: str
    steal: float


def load_data(source: str, n_query: int, n_ref: int, dim: int, seed: int):
    """(query (n, d), ref (m, d)) float32 tensors and a label saying where they came from."""
    if source == "fmnist":
        try:
            return _fashion_mnist(n_query, n_ref, dim)
        except (OSError, ValueError) as err:  # DataNotFoundError included
            print(f"Fashion-MNIST unavailable ({err}); falling back to random data")
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(n_query, dim, generator=gen)
    ref = torch.randn(n_ref, dim, generator=gen)
    return query, ref, f"random normal (seed {seed})"


def _fashion_mnist(n_query: int, n_ref: int, dim: int):
    """Fashion-MNIST test images as queries and training images as references, flattened."""
    from memgen.data import load_idx_images

    ref = load_idx_images("fashion-mnist", "train").images
    query = load_idx_images("fashion-mnist", "test").images
    if dim != 784:
        raise ValueError(f"Fashion-MNIST has 784 dims, not --dim {dim}")
    if n_query > len(query) or n_ref > len(ref):
        raise ValueError(f"Fashion-MNIST has {len(query)} test and {len(ref)} train images")
    query = torch.from_numpy(np.ascontiguousarray(query[:n_query].reshape(n_query, -1)))
    ref = torch.from_numpy(np.ascontiguousarray(ref[:n_ref].reshape(n_ref, -1)))
    return query, ref, "Fashion-MNIST (test vs train, [-1, 1])"


def faiss_search_fn(query: torch.Tensor, ref: torch.Tensor, k: int):
    """A callable running faiss IndexFlatL2 exact search, returning (n, k) int64 indices.

    Each call builds the index and searches, as one memgen call prepares its references and
    searches. None (with a message) when faiss is not installed.
    """
    try:
        import faiss
    except ImportError:
        print("faiss not installed: skipping the faiss comparison (pip install faiss-cpu)")
        return None
    r = np.ascontiguousarray(ref.numpy())
    q = np.ascontiguousarray(query.numpy())

    def search():
        index = faiss.IndexFlatL2(r.shape[1])
        index.add(r)
        return torch.from_numpy(index.search(q, k)[1].astype(np.int64))  # [0]: squared

    search()  # warm-up
    return search


def reference_search(query: torch.Tensor, ref: torch.Tensor, k: int) -> torch.Tensor:
    """The public reference code's kNN: per query, broadcast differences, norm, topk."""
    idx = torch.empty(len(query), k, dtype=torch.int64)
    for i, q in enumerate(query):
        dist = (q[None] - ref).norm(dim=1)  # (m,)
        idx[i] = torch.topk(dist, k, largest=False).indices
    return idx


def exact_d2(query: torch.Tensor, ref: torch.Tensor, idx: torch.Tensor, chunk: int = 1024):
    """Float64 squared distances ‖q_i − r_idx[i, j]‖², shape (n, k)."""
    parts = []
    for s in range(0, len(query), chunk):
        q = query[s:s + chunk].double().unsqueeze(1)  # (b, 1, d)
        parts.append((ref[idx[s:s + chunk]].double() - q).square().sum(-1))  # (b, k)
    return torch.cat(parts)


def compare(query, ref, idx_memgen: torch.Tensor, idx_other: torch.Tensor) -> Agreement:
    """Classify the rows where idx_other differs from memgen's by exact float64 distances."""
    diff = torch.nonzero((idx_memgen != idx_other).any(dim=1)).squeeze(1)
    if len(diff) == 0:
        return Agreement(len(idx_memgen), 0, 0, 0, 0)
    d_mem = exact_d2(query[diff], ref, idx_memgen[diff]).sort(dim=1).values
    d_oth = exact_d2(query[diff], ref, idx_other[diff]).sort(dim=1).values
    tie = (d_mem == d_oth).all(dim=1)
    other_worse = (d_oth >= d_mem).all(dim=1) & ~tie
    n_tie, n_worse = int(tie.sum()), int(other_worse.sum())
    return Agreement(len(idx_memgen), len(diff), n_tie, n_worse, len(diff) - n_tie - n_worse)


def make_row(method: str, t: Timing, flops: float, mem: Timing, peak: float,
             identical: str, library: bool = False) -> Row:
    """A table row from a timing and the nominal flop count; a library baseline below half
    the GEMM peak is flagged and gets no ratio."""
    gflops = flops / t.seconds / 1e9
    note = handicap(gflops, peak) if library else ""
    if note:
        print(f"{method}: {note}")
        identical = f"{identical}; {note}"
    return Row(method, t.seconds, gflops, speedup_cell(t.seconds, mem.seconds, note),
               100 * gflops / peak, identical, t.steal)


def print_table(rows: list[Row]) -> None:
    """The compact result table; 'time/memgen' > 1 means slower than memgen."""
    head = (f"{'method':<34s} {'seconds':>9s} {'GFLOP/s':>8s} {'time/memgen':>11s} "
            f"{'% GEMM peak':>11s} {'steal':>6s}  neighbours identical")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r.method:<34s} {r.seconds:9.2f} {r.gflops:8.1f} {r.vs_memgen:>11s} "
              f"{r.pct_peak:10.1f}% {100 * r.steal:5.1f}%  {r.identical}")


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options; defaults are the Fashion-MNIST test-vs-train problem."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-query", type=int, default=10_000)
    p.add_argument("--n-ref", type=int, default=60_000)
    p.add_argument("--dim", type=int, default=784)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--data", choices=("fmnist", "random"), default="fmnist")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="threads of torch, numpy's BLAS and faiss alike")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds; best is kept")
    p.add_argument("--n-sub", type=int, default=200, help="queries timed for the reference")
    p.add_argument("--seed", type=int, default=0, help="for --data random")
    return p.parse_args(argv)


def print_setup(args, label: str, query: torch.Tensor, ref: torch.Tensor) -> None:
    """Machine, versions and problem size."""
    try:
        import faiss
        faiss_version = faiss.__version__
    except ImportError:
        faiss_version = "absent"
    print(f"CPU: {_cpu_model()}, {torch.get_num_threads()} torch threads")
    print(f"python {platform.python_version()}, torch {torch.__version__}, "
          f"numpy {np.__version__}, faiss {faiss_version}")
    print_blas_report()
    print(f"data: {label}; {len(query)} queries x {len(ref)} refs x {query.shape[1]} dims, "
          f"k={args.k}, float32")


def _cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else platform's guess."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def main(argv=None) -> list[Row]:
    """Run all measurements and print the table; returns its rows."""
    args = parse_args(argv)
    set_threads(args.threads)
    query, ref, label = load_data(args.data, args.n_query, args.n_ref, args.dim, args.seed)
    print_setup(args, label, query, ref)
    best, has_faiss = time_methods(query, ref, args)
    gemms = [name for name in best if name.startswith(("torch.mm", "numpy.matmul"))]
    peak = max(gemm_rate(best, name) for name in gemms)
    mem = best["memgen knn_search"]
    flops = 2.0 * len(query) * len(ref) * query.shape[1]
    print(f"memgen: {mem.output.n_fallback} rows needed the float64 fallback")
    rows = [Row(name, best[name].seconds, gemm_rate(best, name), "-",
                100 * gemm_rate(best, name) / peak, "-", best[name].steal) for name in gemms]
    rows.append(make_row("memgen knn_search", mem, flops, mem, peak, "(reference)"))
    if has_faiss:
        rows.append(faiss_row(query, ref, best["faiss IndexFlatL2"], mem, flops, peak))
    rows.append(reference_row(query, ref, args.k, args.n_sub, mem, peak))
    print(f"GEMM peak (best library and shape): {peak:.1f} GFLOP/s; memgen reaches "
          f"{100 * flops / mem.seconds / 1e9 / peak:.1f}% of it\n")
    print_table(rows)
    print_phases(query, ref, args.k)
    return rows


def time_methods(query: torch.Tensor, ref: torch.Tensor, args) -> tuple[dict[str, Timing], bool]:
    """Warm up, then time GEMM, memgen and faiss in interleaved rounds."""
    k = args.k
    knn_search(query[:256], ref, k)  # warm-up
    plan = gemm_plan() | numpy_gemm_plan()
    plan["memgen knn_search"] = lambda: knn_search(query, ref, k)
    faiss_fn = faiss_search_fn(query, ref, k)
    if faiss_fn is not None:
        plan["faiss IndexFlatL2"] = faiss_fn
    print(f"timing ({args.repeats} interleaved rounds, best kept):")
    return interleaved_best(plan, args.repeats), faiss_fn is not None


def gemm_rate(best: dict[str, Timing], name: str) -> float:
    """GFLOP/s of the best run of a GEMM plan entry (2abc flops, the shape read from name)."""
    for shape in GEMM_SHAPES:
        if name.endswith(gemm_name(shape, "")):
            a, b, c = shape
            return 2.0 * a * b * c / best[name].seconds / 1e9
    raise KeyError(name)


def faiss_row(query, ref, fa: Timing, mem: Timing, flops: float, peak: float) -> Row:
    """Table row for faiss, its neighbours checked against memgen's."""
    agree = compare(query, ref, mem.output.idx, fa.output)
    print(f"faiss vs memgen: memgen runs at {fa.seconds / mem.seconds:.2f}x faiss speed; "
          f"{agree.n_diff}/{agree.n_rows} rows differ: {agree.n_tie} exact ties, "
          f"{agree.n_other_worse} faiss farther, {agree.n_memgen_worse} memgen farther")
    return make_row("faiss IndexFlatL2", fa, flops, mem, peak, agree.verdict(), library=True)


def reference_row(query, ref, k: int, n_sub: int, mem: Timing, peak: float) -> Row:
    """Time the reference method on the first n_sub queries, scale to all, check neighbours."""
    n_sub = min(n_sub, len(query))
    reference_search(query[:2], ref, k)  # warm-up
    sub = time_once(lambda: reference_search(query[:n_sub], ref, k))
    agree = compare(query[:n_sub], ref, mem.output.idx[:n_sub], sub.output)
    scale = len(query) / n_sub
    print(f"reference (broadcast-norm-topk): {sub.seconds:.2f} s for {n_sub} queries, scaled "
          f"linearly x{scale:g} to {sub.seconds * scale:.1f} s; neighbours on the subset: "
          f"{agree.verdict()}")
    scaled = Timing(sub.seconds * scale, sub.steal)
    flops = 2.0 * len(query) * len(ref) * query.shape[1]
    return make_row(f"reference (scaled from {n_sub} q)", scaled, flops, mem, peak,
                    f"{agree.verdict()} (on {n_sub} q); the naive method")


def print_phases(query: torch.Tensor, ref: torch.Tensor, k: int) -> None:
    """One more memgen search with its phases timed (exclusive times, wall clock)."""
    with _phase_timer() as spent:
        t0 = time.perf_counter()
        knn_search(query, ref, k)
        total = time.perf_counter() - t0
    print("\nmemgen phases (a separate, instrumented run):")
    print(f"{'phase':<30s} {'seconds':>8s} {'share':>7s}")
    for phase, names in PHASES.items():
        seconds = sum(spent.get(name, 0.0) for name in names)
        print(f"{phase:<30s} {seconds:8.3f} {100 * seconds / total:6.1f}%")
    rest = total - sum(spent.values())
    print(f"{'other (validation, Python)':<30s} {rest:8.3f} {100 * rest / total:6.1f}%")
    print(f"{'total':<30s} {total:8.3f}")


@contextmanager
def _phase_timer():
    """Wrap the phase functions of memgen.neighbours; yields {name: exclusive seconds}."""
    spent: dict[str, float] = {}
    stack: list[float] = []  # time spent in nested wrapped calls, per open call

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            stack.append(0.0)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - t0
                inner = stack.pop()
                spent[name] = spent.get(name, 0.0) + elapsed - inner
                if stack:
                    stack[-1] += elapsed
        return wrapper

    screen, fast = SCREEN.Screen, BF16.Bf16Screen
    names = ("_scores", "_smallest", "_merge_block", "refine_candidates", "refine_widths",
             "_certified", "float64_fallback")
    # a function is bound in its own module and in each that imports it: wrap it in all
    originals = {(module, name): getattr(module, name) for module in ENGINE for name in names
                 if hasattr(module, name)}
    wrapped = {name: timed(name, fn) for (_, name), fn in originals.items()}
    build, queries = screen.build.__func__, screen.queries
    methods = {name: getattr(fast, name) for name in ("queries", "slack", "lower", "width")}
    of = fast.of.__func__
    proxy = type("TorchProxy", (), {"__getattr__": lambda self, name: getattr(torch, name)})()
    proxy.mm = timed("mm", torch.mm)
    try:
        for module, name in originals:
            setattr(module, name, wrapped[name])
        screen.build = classmethod(timed("build", build))
        screen.queries = timed("queries", queries)
        fast.of = classmethod(timed("Bf16Screen.of", of))
        for name, fn in methods.items():
            setattr(fast, name, timed(f"Bf16Screen.{name}", fn))
        for module in ENGINE:
            module.torch = proxy
        yield spent
    finally:
        for (module, name), fn in originals.items():
            setattr(module, name, fn)
        for module in ENGINE:
            module.torch = torch
        screen.build, screen.queries = classmethod(build), queries
        fast.of = classmethod(of)
        for name, fn in methods.items():
            setattr(fast, name, fn)


if __name__ == "__main__":
    main()
