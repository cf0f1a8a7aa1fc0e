"""Floor 2 — exact nearest neighbours under Euclidean distance.

The exact kNN engine (``exact``: screen in float32, ``bf16``: a bfloat16 pre-screen where
the CPU multiplies bfloat16 in hardware, ``refine``: float64 re-scoring, certified by the
error bound of ``precision``), the same search through faiss (``faiss_backend``), a
search streamed from shard files on disk (``stream``, ``shards``) and the energies'
all-pairs squared distances (``pairwise``). Every engine returns the same neighbours,
ties going to the smaller index. Arrays in, arrays out: no metric, no model.

May import: floors 0–1 (``memgen.errors``, ``memgen.io``) and this package.
"""

from memgen.neighbours.exact import (DEFAULT_MEMORY_BUDGET, KnnResult, as_tensor, brute_force_knn,
                                     knn, knn_search, resolve_budget)
from memgen.neighbours.faiss_backend import MISSING_FAISS, faiss_available, faiss_knn_search
from memgen.neighbours.pairwise import pairwise_sq_dist
from memgen.neighbours.precision import (centred, mean_center, screen_error_bound, sq_norms,
                                         unit_roundoff)
from memgen.neighbours.refine import candidate_sq_dist, take_sorted
from memgen.neighbours.screen import block_sizes
from memgen.neighbours.shards import (Chunk, Shard, ShardSet, find_shards, iter_chunks,
                                      open_array, open_shards)
from memgen.neighbours.stream import (KNN_BACKENDS, Embedding, Flatten, get_knn_backend,
                                      stream_knn)

__all__ = [
    "Chunk", "DEFAULT_MEMORY_BUDGET", "Embedding", "Flatten", "KNN_BACKENDS", "KnnResult",
    "MISSING_FAISS", "Shard", "ShardSet", "as_tensor", "block_sizes", "brute_force_knn", "candidate_sq_dist",
    "centred", "faiss_available", "faiss_knn_search", "find_shards", "get_knn_backend",
    "iter_chunks", "knn", "knn_search", "mean_center", "open_array", "open_shards",
    "pairwise_sq_dist", "resolve_budget", "screen_error_bound", "sq_norms", "stream_knn",
    "take_sorted", "unit_roundoff",
]
