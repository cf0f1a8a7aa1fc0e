"""Exact kNN against a reference set streamed from shard files, restartable.

The synthetic set S′ can outgrow memory (16 × 50,000 CIFAR-10 images, or 10⁶ at
28×28), while the evaluated queries (~10k) fit. So the queries stay in memory and
the reference set is read in chunks of rows:

    for each chunk R_c (global rows o … o + |R_c|):
        top-k of every query within φ(R_c)      (knn_search or faiss_knn_search)
        indices += o; merge into the running top-k by (distance, index)

Both per-chunk engines are exact with ties broken by the smaller index, and a global
top-k is the top-k of the per-chunk top-k's, so the result equals one in-memory
search over the whole reference set. (One nuance: merging compares the reported
float64 distances √d², the in-memory engine compares d²; two distinct d² with the same
square root then come out ordered by index here.)

The reference rows come from shard files through :mod:`memgen.neighbours.shards`
(memory-mapped, never loaded whole). Progress is saved after every chunk, so an
interrupted search resumes where it stopped.
"""

from __future__ import annotations

import functools
import hashlib
import json
import zipfile
import zlib
from pathlib import Path
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from memgen.errors import UserError
from memgen.io import atomic_file
from memgen.neighbours.exact import DEFAULT_MEMORY_BUDGET, KnnResult, knn_search
from memgen.neighbours.faiss_backend import MISSING_FAISS, faiss_available, faiss_knn_search
from memgen.neighbours.refine import take_sorted
from memgen.neighbours.shards import (Chunk, Shard, ShardSet, iter_chunks, open_array,
                                      open_shards)

KNN_BACKENDS: dict[str, Callable[..., KnnResult]] = {
    "builtin": knn_search,
    "faiss": faiss_knn_search,
}
_STATE_VERSION = 1


class Embedding(Protocol):
    """The feature map φ a streamed search applies to every chunk (a
    :class:`memgen.metrics.features.FeatureMap` is one): its name, which the restart state
    records, and embed, (rows, ...) samples → (rows, D) vectors."""

    name: str
    embed: Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Flatten:
    """φ = identity: samples flattened to vectors, so distances are Euclidean on pixels.
    Named ``l2``, as the metric of the same map in :mod:`memgen.metrics.features`."""

    name: str = "l2"

    @staticmethod
    def embed(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1)


def get_knn_backend(name: str) -> Callable[..., KnnResult]:
    """The exact kNN engine registered under ``name`` ("builtin" or "faiss")."""
    if name not in KNN_BACKENDS:
        raise UserError(f"unknown kNN backend {name!r}; known backends: "
                         f"{', '.join(KNN_BACKENDS)}")
    if name == "faiss" and not faiss_available():
        raise UserError(MISSING_FAISS)
    return KNN_BACKENDS[name]


# ---------------------------------------------------------------------------- search


def stream_knn(query: torch.Tensor, source, k: int, *, feature_map: Embedding | None = None,
               exclude=None, backend: str = "builtin", memory_budget: int | None = None,
               chunk_rows: int | None = None, margin: int = 8, state: str | Path | None = None,
               callback: Callable[[int, int], None] | None = None,
               progress: bool = False, bf16_screen: bool | None = None) -> KnnResult:
    """Exact top-k neighbours of in-memory queries among the rows of a streamed reference set.

    query:   (n, D) embedded queries (φ already applied), or (n, ...) flattened to D.
    source:  shard files (see :func:`~memgen.neighbours.shards.find_shards`) or a
             :class:`ShardSet` of m rows.
    feature_map: φ applied to every chunk (default ``l2``, the flattening); distances
             are ‖φ(x) − φ(y)‖ — raise them to ``feature_map.power`` for the metric.
    exclude: None, or (n,) / (n, e) integer global reference indices that query i must
             not match (negative entries are ignored). Queries that are the first n rows
             of the reference set: ``exclude=np.arange(n)``.
    backend: "builtin" (:func:`knn_search`) or "faiss" (:func:`faiss_knn_search`).
    chunk_rows: rows per chunk; None derives it from memory_budget (bytes, default
             512 MiB), which also bounds the per-chunk score block.
    state:   .npz path saved atomically after every chunk (running top-k, rows done and a
             fingerprint of shards, queries, exclusions, k, metric and backend); a later
             call with the same fingerprint resumes there (a finished state returns at
             once), a different one raises ValueError.
    callback(rows_done, m) runs after each chunk (and its state save).
    bf16_screen: the builtin engine's bfloat16 pre-screen (:func:`knn_search`): None where
             it pays, True / False forced on or off; the neighbours are the same.

    Returns a :class:`KnnResult`: dist (n, k) float64, idx (n, k) int64 global indices,
    ascending by (distance, index) — equal to an in-memory search over all m rows;
    n_fallback sums the per-chunk counts. Chunks after the first are searched within each
    query's running k-th distance (``knn_search``'s bound; builtin backend). Peak memory ≈
    the queries + one chunk (raw float32 rows, their embedding, one float32 and one
    bfloat16 copy of it: ≤ memory_budget) + the engine's score block (≤ memory_budget;
    faiss instead holds a second float32 copy of the embedded chunk and a float32 copy of
    the queries) + O(n (k + margin + e))
    candidates; a compressed npz shard adds its whole array. So about size(queries) +
    2 × memory_budget. Everything lives on the queries' device.
    """
    shards = open_shards(source)
    search = _engine(backend, bf16_screen)
    feature_map = feature_map or Flatten()
    query = _check_query(query)
    m = shards.rows
    excl = _exclusions(exclude, len(query), m, k, query.device)
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else int(memory_budget)
    derived = _chunk_rows(shards, feature_map, query, budget)  # also checks the feature sizes
    rows = derived if chunk_rows is None else chunk_rows
    fingerprint = _fingerprint(shards, query, excl, k, feature_map.name, backend)
    dist, idx, done, n_fallback = _resume(state, fingerprint, query, k, m)
    with tqdm(total=m, initial=done, desc="kNN (streamed)", unit="row", unit_scale=True,
              disable=not progress) as bar:
        for chunk in iter_chunks(shards, rows, start=done):
            # past the first chunk, a query needs nothing beyond its running k-th (builtin)
            bound = dist[:, -1] if dist.shape[1] == k and backend == "builtin" else None
            found = _search_chunk(search, query, feature_map, chunk, k, excl, memory_budget,
                                  margin, bound)
            dist, idx = take_sorted(torch.cat([dist, found.dist], dim=1),
                                    torch.cat([idx, found.idx], dim=1), k)
            n_fallback += found.n_fallback
            done = chunk.offset + len(chunk.samples)
            if state is not None:
                _save_state(Path(state), fingerprint, dist, idx, done, n_fallback)
            bar.update(len(chunk.samples))
            if callback is not None:
                callback(done, m)
    assert dist.shape == (len(query), k) and torch.isfinite(dist).all()
    return KnnResult(dist=dist, idx=idx, n_fallback=n_fallback)


def _engine(backend: str, bf16_screen: bool | None) -> Callable[..., KnnResult]:
    """The backend's search, with the builtin engine's screen choice bound where given."""
    search = get_knn_backend(backend)
    if bf16_screen is None:
        return search
    if backend != "builtin":
        raise UserError(f"bf16_screen applies to the builtin kNN backend, not {backend!r}")
    return functools.partial(search, bf16_screen=bf16_screen)


def _check_query(query) -> torch.Tensor:
    if not isinstance(query, torch.Tensor):
        query = torch.from_numpy(np.ascontiguousarray(query))
    if query.ndim < 2 or query.shape[0] == 0:
        raise UserError("query must be a non-empty (n, D) array of embedded samples")
    return query.reshape(query.shape[0], -1)


def _exclusions(exclude, n: int, m: int, k: int, device) -> torch.Tensor | None:
    """(n, e) int64 excluded global indices, after checking k fits every query."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise UserError(f"k must be a positive integer, got {k!r}")
    if exclude is None:
        excl, worst = None, 0
    else:
        excl = np.asarray(exclude.cpu() if isinstance(exclude, torch.Tensor) else exclude)
        if not np.issubdtype(excl.dtype, np.integer) or excl.ndim not in (1, 2) \
                or excl.shape[0] != n:
            raise UserError(f"exclude must be integer indices of shape ({n},) or ({n}, e), "
                             f"got {excl.dtype} {excl.shape}")
        excl = np.sort(excl.reshape(n, -1).astype(np.int64), axis=1)
        distinct = (excl >= 0) & (excl < m)
        distinct[:, 1:] &= excl[:, 1:] != excl[:, :-1]
        worst = int(distinct.sum(axis=1).max(initial=0))
        excl = torch.from_numpy(excl).to(device)
    if k > m - worst:
        raise UserError(f"k={k} neighbours requested but the reference set offers "
                         f"{m - worst} (of {m} rows, after exclusions)")
    return excl


def _embed(feature_map: Embedding, samples: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        emb = feature_map.embed(samples)
    return emb.reshape(emb.shape[0], -1)


def _chunk_rows(shards: ShardSet, feature_map: Embedding, query: torch.Tensor,
                budget: int) -> int:
    """Rows whose float32 data, embedding, one float32 and one bfloat16 copy of it (the
    screens of ``knn_search``) fit ``budget`` bytes.

    Embeds the first row to learn the embedding's size, and checks it matches the queries.
    """
    if budget <= 0:
        raise UserError("memory_budget must be a positive number of bytes")
    first = next(iter_chunks(shards, 1)).samples.to(query.device)
    emb = _embed(feature_map, first)
    if emb.shape[1] != query.shape[1]:
        raise UserError(f"the queries have {query.shape[1]} features but the {feature_map.name}"
                         f" embedding of a reference sample has {emb.shape[1]}; embed the "
                         "queries with the same feature map")
    per_row = 4 * first[0].numel() + (emb.element_size() + 4 + 2) * emb.shape[1]
    return max(1, budget // per_row)


def _search_chunk(search, query, feature_map, chunk: Chunk, k, excl, memory_budget,
                  margin, bound=None) -> KnnResult:
    """Top-k (k + e with exclusions inside the chunk) of every query within one chunk,
    those closer than bound (n,) at least where it is given (``knn_search``'s bound).

    Returns global indices; excluded matches and entries left past the bound carry
    distance inf.
    """
    emb = _embed(feature_map, chunk.samples.to(query.device))
    lo, hi = chunk.offset, chunk.offset + len(emb)
    extra = 0
    if excl is not None:
        extra = int(((excl >= lo) & (excl < hi)).sum(dim=1).max())
    kwargs = {} if bound is None else {"bound": bound}
    found = search(query, emb, min(k + extra, len(emb)), memory_budget=memory_budget,
                   margin=margin, **kwargs)
    idx, dist = torch.where(found.idx >= 0, found.idx + lo, -1), found.dist
    if extra:
        dist = dist.masked_fill((idx.unsqueeze(2) == excl.unsqueeze(1)).any(dim=2), float("inf"))
    return KnnResult(dist=dist, idx=idx, n_fallback=found.n_fallback)


# ---------------------------------------------------------------------------- restart state


def _fingerprint(shards: ShardSet, query, excl, k: int, metric: str, backend: str) -> dict:
    """What a saved state must match: shard names, sizes and edge rows, queries, k, metric."""
    return {
        "version": _STATE_VERSION,
        "shards": [[s.path.name, s.rows, list(s.sample_shape), s.dtype, s.path.stat().st_size,
                    _edge_rows_digest(s)] for s in shards.shards],
        "queries": _tensor_digest(query),
        "exclude": None if excl is None else _tensor_digest(excl),
        "k": int(k), "metric": metric, "backend": backend,
    }


def _edge_rows_digest(shard: Shard) -> str:
    """sha256 of a shard's first and last rows: catches regenerated data of the same size."""
    if shard.rows == 0:
        return ""
    array = open_array(shard)
    return hashlib.sha256(np.ascontiguousarray(array[[0, -1]]).tobytes()).hexdigest()


def _tensor_digest(x: torch.Tensor, block: int = 4096) -> str:
    digest = hashlib.sha256(f"{x.dtype} {tuple(x.shape)}".encode())
    for r0 in range(0, len(x), block):
        digest.update(x[r0:r0 + block].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _resume(state, fingerprint: dict, query: torch.Tensor, k: int, m: int):
    """(dist, idx, rows_done, n_fallback) from a matching state file, or an empty start."""
    n, device = len(query), query.device
    empty = (torch.empty(n, 0, dtype=torch.float64, device=device),
             torch.empty(n, 0, dtype=torch.int64, device=device), 0, 0)
    if state is None or not Path(state).exists():
        return empty
    try:
        with np.load(state, allow_pickle=False) as saved:
            stored = json.loads(str(saved["fingerprint"]))
            dist, idx = saved["dist"], saved["idx"]
            done, n_fallback = int(saved["rows_done"]), int(saved["n_fallback"])
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise UserError(f"cannot read the kNN state {state} ({err}); delete it to "
                         "start over") from None
    if stored != fingerprint:
        changed = sorted(key for key in fingerprint if stored.get(key) != fingerprint[key])
        raise UserError(f"the kNN state {state} belongs to a different search (it differs "
                         f"in: {', '.join(changed)}); delete it or choose another state file")
    assert dist.shape == idx.shape and dist.shape[0] == n and dist.shape[1] <= k
    assert 0 <= done <= m
    return (torch.from_numpy(dist).to(device), torch.from_numpy(idx).to(device), done,
            n_fallback)


def _save_state(path: Path, fingerprint: dict, dist, idx, done: int, n_fallback: int) -> None:
    with atomic_file(path) as tmp, tmp.open("wb") as f:
        np.savez(f, fingerprint=np.array(json.dumps(fingerprint, sort_keys=True)),
                 dist=dist.cpu().numpy(), idx=idx.cpu().numpy(),
                 rows_done=np.int64(done), n_fallback=np.int64(n_fallback))
