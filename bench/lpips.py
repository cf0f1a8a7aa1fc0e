"""LPIPS kNN benchmark: the exact embedding (memgen) vs the pairwise method (reference code).

Task: the top-k LPIPS neighbours of ``--n-query`` images among ``--n-ref`` images
(defaults 1,000 × 10,000, 32×32 RGB, top-5), LPIPS-AlexNet v0.1.

1. embedding: one network pass per image (φ of ``memgen.metrics.lpips``), then memgen's
   exact kNN on the embeddings (LPIPS = ‖φ(x) − φ(y)‖²);
2. pairwise, as the public reference code does: for each query, the query repeated
   against every reference image in batches, both through the network, per pair
   (``lpips_pairwise``, numerically the ``lpips`` package's forward). It is timed on
   ``--n-sub`` queries and scaled linearly to all queries (each query costs the same).

The pairwise values of the subset are compared with the embedding's distances for the
same pairs (max relative difference) and their top-k with the embedding's top-k. Random
backbone weights (timing and equality do not depend on them); float32 throughout.

    .venv/bin/python bench/lpips.py [--n-query 1000 --n-ref 10000 --size 32 --k 5
                                     --net alex --n-sub 2 --batch 500 --threads N --device cpu]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from common import print_blas_report, set_threads, time_once

from memgen.neighbours import knn_search
from memgen.metrics.lpips import embed_batched, lpips_pairwise, random_lpips


def embedding_knn(model, queries, refs, k, batch):
    emb_q, emb_r = embed_batched(model, queries, batch), embed_batched(model, refs, batch)
    result = knn_search(emb_q, emb_r, k)
    return result.dist.square(), result.idx  # LPIPS values and indices


@torch.no_grad()
def pairwise_rows(model, queries, refs, batch):
    """(n_sub, n_ref) LPIPS by the per-pair method."""
    rows = []
    for q in queries:
        row = [lpips_pairwise(model, q.expand(len(r), -1, -1, -1), r)
               for r in refs.split(batch)]
        rows.append(torch.cat(row))
    return torch.stack(rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-query", type=int, default=1000)
    parser.add_argument("--n-ref", type=int, default=10000)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--net", choices=("alex", "vgg"), default="alex")
    parser.add_argument("--n-sub", type=int, default=2, help="queries timed pairwise")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    shape = (3, args.size, args.size)
    queries = (torch.rand(args.n_query, *shape, generator=gen) * 2 - 1).to(device)
    refs = (torch.rand(args.n_ref, *shape, generator=gen) * 2 - 1).to(device)
    model = random_lpips(args.net, seed=0).to(device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}; "
          f"LPIPS-{args.net}, {args.n_query} x {args.n_ref} images of {shape}, top-{args.k}")
    print_blas_report()

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    embedding_knn(model, queries[:50], refs[:200], args.k, args.batch)  # warm-up
    pairwise_rows(model, queries[:1], refs[:args.batch], args.batch)
    sync()
    emb = time_once(lambda: (embedding_knn(model, queries, refs, args.k, args.batch), sync()))
    (values, idx), _ = emb.output
    pair = time_once(lambda: (pairwise_rows(model, queries[:args.n_sub], refs, args.batch),
                              sync()))
    rows = pair.output[0].double()
    pair_total = pair.seconds * args.n_query / args.n_sub

    emb_q = embed_batched(model, queries[:args.n_sub], args.batch).double()
    emb_r = embed_batched(model, refs, args.batch).double()
    emb_rows = torch.cdist(emb_q, emb_r).square()
    rel = ((emb_rows - rows).abs() / rows).max().item()
    top_pair = torch.topk(rows, args.k, largest=False).indices.cpu().numpy()
    same = np.array_equal(np.sort(top_pair, 1), np.sort(idx[:args.n_sub].cpu().numpy(), 1))
    n_pairs = args.n_query * args.n_ref
    print("\n| method | time | pairs/s | ratio |\n|---|---:|---:|---:|")
    print(f"| embedding + exact kNN | {emb.seconds:.2f} s | {n_pairs / emb.seconds:,.0f} "
          f"| 1 |")
    print(f"| pairwise, the naive method ({args.n_sub} queries timed, scaled to {args.n_query}) "
          f"| {pair_total:,.0f} s | {n_pairs / pair_total:,.0f} "
          f"| {pair_total / emb.seconds:,.0f}x slower |")
    print(f"\nmax relative difference, embedding vs pairwise LPIPS over "
          f"{args.n_sub * args.n_ref:,} pairs: {rel:.2e}; same top-{args.k} on those queries: "
          f"{same}; steal {100 * emb.steal:.1f}% / {100 * pair.steal:.1f}%")
    assert values.shape == (args.n_query, args.k)


if __name__ == "__main__":
    main()
