"""Streamed kNN over shard files equals one in-memory search; the faiss engine equals the
built-in."""

import importlib
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from memgen.io import validate_samples
from memgen.metrics.features import FeatureMap
from memgen.neighbours import (brute_force_knn, faiss_knn_search, find_shards, get_knn_backend,
                               iter_chunks, knn_search, open_shards, stream_knn, take_sorted)
from memgen.neighbours import faiss_backend as faiss_knn

SIZES = (10, 0, 23, 24)  # uneven shards, one empty: 57 rows


def _write(folder, data, fmt, sizes=SIZES, name="synth"):
    """Split data into shards NAME-00000.fmt, …; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    bounds = np.cumsum((0,) + tuple(sizes))
    for s, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        path = folder / f"{name}-{s:05d}.{fmt}"
        if fmt == "npy":
            np.save(path, data[lo:hi])
        else:
            np.savez(path, samples=data[lo:hi])
    return folder


def _grid_data(rng, m=57, d=3):
    """Integer points with many duplicates: exact ties everywhere."""
    base = rng.integers(-2, 3, size=(m // 3 + 1, d)).astype(np.float32)
    return np.repeat(base, 3, axis=0)[:m][rng.permutation(m)]


def _assert_same(result, expected):
    np.testing.assert_array_equal(result.idx.numpy(), expected.idx.numpy())
    np.testing.assert_array_equal(result.dist.numpy(), expected.dist.numpy())


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 30), m=st.integers(40, 400), d=st.integers(1, 12),
       kind=st.sampled_from(["normal", "grid", "duplicates", "offset"]),
       chunk_rows=st.integers(1, 450), k=st.integers(1, 5), bf16=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_streamed_equals_brute_force(n, m, d, kind, chunk_rows, k, bf16, seed):
    """Any chunk size, on data full of ties, duplicates or far from the origin, with the
    bfloat16 pre-screen of each chunk's search on or off: float64 brute force's answer."""
    rng = np.random.default_rng(seed)
    if kind == "grid":
        ref, query = rng.integers(-2, 3, (m, d)), rng.integers(-2, 3, (n, d))
    elif kind == "duplicates":
        ref = rng.normal(size=(max(m // 4, 1), d))[rng.integers(0, max(m // 4, 1), m)]
        query = ref[rng.integers(0, m, n)]
    else:
        shift = 2.0**18 if kind == "offset" else 0.0
        ref, query = shift + rng.normal(size=(m, d)), shift + rng.normal(size=(n, d))
    ref, query = ref.astype(np.float32), query.astype(np.float32)
    sizes = (m // 3, 0, m - m // 3)
    with tempfile.TemporaryDirectory() as tmp:
        folder = _write(Path(tmp) / "s", ref, "npy", sizes=sizes)
        result = stream_knn(torch.from_numpy(query), folder, k, chunk_rows=chunk_rows,
                            bf16_screen=bf16)
    dist, idx = brute_force_knn(query, ref, k)
    np.testing.assert_array_equal(result.idx.numpy(), idx)
    np.testing.assert_array_equal(result.dist.numpy(), dist)


@pytest.mark.parametrize("fmt", ["npy", "npz"])
@pytest.mark.parametrize("chunk_rows", [1, 7, 57, 1000])
def test_streamed_equals_in_memory(tmp_path, fmt, chunk_rows):
    rng = np.random.default_rng(chunk_rows)
    ref = _grid_data(rng)
    query = torch.from_numpy(_grid_data(rng, m=13))
    folder = _write(tmp_path / "synth", ref, fmt)
    result = stream_knn(query, folder, 5, chunk_rows=chunk_rows)
    _assert_same(result, knn_search(query, torch.from_numpy(ref), 5))


def test_chunks_after_the_first_are_searched_within_the_running_kth(tmp_path):
    """Past the first chunk (of k rows or more), each chunk's search gets the running k-th
    distances as its bound, rows of it go unrefined, and the answer is the in-memory one."""
    rng = np.random.default_rng(11)
    ref = rng.normal(size=(3000, 8)).astype(np.float32)
    query = torch.from_numpy(rng.normal(size=(40, 8)).astype(np.float32))
    folder = _write(tmp_path / "synth", ref, "npy", sizes=(1200, 1800))
    bounds, unrefined = [], []
    stream = importlib.import_module("memgen.neighbours.stream")
    real = stream.get_knn_backend("builtin")

    def search(q, emb, k, **kwargs):
        bounds.append(kwargs.get("bound"))
        found = real(q, emb, k, **kwargs)
        unrefined.append(int((found.idx == -1).all(dim=1).sum()))
        return found

    with mock.patch.object(stream, "get_knn_backend", lambda name: search):
        result = stream_knn(query, folder, 5, chunk_rows=500)
    assert bounds[0] is None and all(b is not None for b in bounds[1:]) and len(bounds) == 6
    assert sum(unrefined[1:]) > 0
    _assert_same(result, knn_search(query, torch.from_numpy(ref), 5))


@pytest.mark.parametrize("chunk_rows", [1, 5, 1000])
def test_exclusion_of_self_matches_with_duplicates(tmp_path, chunk_rows):
    """Queries that are the reference set itself: drop row i's own match, keep its copies."""
    rng = np.random.default_rng(3)
    ref = _grid_data(rng)
    folder = _write(tmp_path / "synth", ref, "npz")
    result = stream_knn(torch.from_numpy(ref), folder, 6, chunk_rows=chunk_rows,
                        exclude=np.arange(len(ref)))
    r = torch.from_numpy(ref)
    _assert_same(result, knn_search(r, r, 6, exclude_self=True))
    assert (result.dist[:, 0] == 0).all()  # every point has a duplicate elsewhere


@pytest.mark.parametrize("chunk_rows", [6, 30])
def test_general_exclusions_equal_brute_force(tmp_path, chunk_rows):
    rng = np.random.default_rng(4)
    ref = rng.normal(size=(57, 4)).astype(np.float32)
    query = rng.normal(size=(9, 4)).astype(np.float32)
    d2 = ((query[:, None, :].astype(np.float64) - ref[None]) ** 2).sum(-1)
    nearest = np.argsort(d2, axis=1)[:, :2]  # excluding the true nearest ones matters most
    exclude = np.concatenate([nearest, rng.integers(-1, 57, size=(9, 2))], axis=1)  # -1: none
    folder = _write(tmp_path / "s", ref, "npy")
    result = stream_knn(torch.from_numpy(query), folder, 4, chunk_rows=chunk_rows,
                        exclude=exclude)
    for i, row in enumerate(exclude):
        d2[i, row[row >= 0]] = np.inf
    order = np.argsort(d2, axis=1, kind="stable")[:, :4]
    np.testing.assert_array_equal(result.idx.numpy(), order)
    np.testing.assert_allclose(result.dist.numpy(), np.sqrt(np.take_along_axis(d2, order, 1)),
                               rtol=1e-12)
    assert not (result.idx.numpy()[:, :, None] == exclude[:, None, :]).any()


def test_feature_map_and_budget_derived_chunks(tmp_path):
    """Chunks are embedded by φ; a small memory budget gives several chunks, same answer."""
    rng = np.random.default_rng(5)
    ref = rng.normal(size=(57, 1, 2, 3)).astype(np.float32)
    query = rng.normal(size=(8, 1, 2, 3)).astype(np.float32)
    weights = torch.from_numpy(rng.normal(size=(6, 4)).astype(np.float32))
    phi = FeatureMap("test-linear", lambda x: x.reshape(len(x), -1) @ weights, power=2)
    calls = []
    folder = _write(tmp_path / "s", ref, "npz")
    q_emb = phi.embed(torch.from_numpy(query))
    # per row: 6 raw floats + 4 embedded floats + a float32 and a bfloat16 copy = 64 bytes
    result = stream_knn(q_emb, folder, 3, feature_map=phi, memory_budget=640,
                        callback=lambda done, m: calls.append(done))
    assert calls == [10, 20, 30, 40, 50, 57]
    _assert_same(result, knn_search(q_emb, phi.embed(torch.from_numpy(ref)), 3))


def test_reader_converts_like_load_samples(tmp_path):
    """uint8 images, Fortran order, compressed npz, other key names: same rows as in memory."""
    rng = np.random.default_rng(6)
    images = rng.integers(0, 256, size=(20, 1, 3, 3), dtype=np.uint8)
    floats = rng.uniform(-1, 1, size=(20, 1, 3, 3))  # float64 on disk, images in [-1, 1]
    np.save(tmp_path / "a-1.npy", images[:7])
    np.save(tmp_path / "a-2.npy", np.asfortranarray(images[7:]))
    np.savez_compressed(tmp_path / "b-1.npz", x=floats[:11])
    np.savez(tmp_path / "b-2.npz", samples=floats[11:])
    for pattern, data in (("a-*.npy", images), ("b-*.npz", floats)):
        shards = open_shards(str(tmp_path / pattern))
        got = torch.cat([c.samples for c in iter_chunks(shards, 4)]).numpy()
        np.testing.assert_array_equal(got, validate_samples(data))
    offsets = [s.data_offset for s in open_shards(str(tmp_path / "b-*.npz")).shards]
    assert offsets[0] is None and offsets[1] is not None  # compressed: read whole; stored: mapped


def test_directory_layout_of_generate(tmp_path):
    """Numbered shards sorted as numbers; the merged NAME.npz and temporary files skipped."""
    data = np.arange(30, dtype=np.float32).reshape(15, 2)
    for s, (lo, hi) in enumerate([(0, 4), (4, 9), (9, 15)]):
        np.savez(tmp_path / f"synth-{[2, 10, 11][s]}.npz", samples=data[lo:hi])
    np.savez(tmp_path / "synth.npz", samples=data)
    np.savez(tmp_path / "synth-12.npz.tmp.npz", samples=data)
    (tmp_path / "synth.json").write_text("{}")
    assert [p.name for p in find_shards(tmp_path)] == ["synth-2.npz", "synth-10.npz",
                                                        "synth-11.npz"]
    got = torch.cat([c.samples for c in iter_chunks(open_shards(tmp_path), 4, start=3)])
    np.testing.assert_array_equal(got.numpy(), data[3:])


def test_restart_resumes_and_gives_identical_results(tmp_path):
    rng = np.random.default_rng(7)
    ref = _grid_data(rng)
    query = torch.from_numpy(ref[:11])
    folder = _write(tmp_path / "synth", ref, "npz")
    state = tmp_path / "state" / "knn.npz"
    expected = knn_search(torch.from_numpy(ref), torch.from_numpy(ref), 4, exclude_self=True)

    def stop_after_three(done, m):
        if done >= 15:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        stream_knn(query, folder, 4, chunk_rows=5, exclude=np.arange(11), state=state,
                   callback=stop_after_three)
    seen = []
    result = stream_knn(query, folder, 4, chunk_rows=8, exclude=np.arange(11), state=state,
                        callback=lambda done, m: seen.append(done))
    assert seen[0] == 23  # resumed after row 15 with the new chunk size
    np.testing.assert_array_equal(result.idx.numpy(), expected.idx.numpy()[:11])
    np.testing.assert_array_equal(result.dist.numpy(), expected.dist.numpy()[:11])
    seen.clear()
    again = stream_knn(query, folder, 4, exclude=np.arange(11), state=state,
                       callback=lambda done, m: seen.append(done))
    assert seen == [] and torch.equal(again.idx, result.idx)  # finished state: no work


def test_state_of_another_search_is_refused(tmp_path):
    rng = np.random.default_rng(8)
    ref = rng.normal(size=(57, 3)).astype(np.float32)
    query = torch.from_numpy(ref[:5])
    folder = _write(tmp_path / "synth", ref, "npy")
    state = tmp_path / "knn.npz"
    stream_knn(query, folder, 3, state=state)
    with pytest.raises(ValueError, match="differs in: k"):
        stream_knn(query, folder, 2, state=state)
    with pytest.raises(ValueError, match="differs in: queries"):
        stream_knn(query + 1, folder, 3, state=state)
    np.save(folder / "synth-00003.npy", ref[33:] + 1)  # regenerated shard, same size
    with pytest.raises(ValueError, match="differs in: shards"):
        stream_knn(query, folder, 3, state=state)


def test_bad_input_errors(tmp_path):
    q = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="list of shard files is empty"):
        stream_knn(q, [], 1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no .npy or .npz"):
        stream_knn(q, tmp_path / "empty", 1)
    with pytest.raises(ValueError, match="no shard files match"):
        stream_knn(q, str(tmp_path / "nothing-*.npz"), 1)
    np.save(tmp_path / "a.npy", np.zeros((4, 3), np.float32))
    np.save(tmp_path / "b.npy", np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match=r"b.npy holds samples of shape \(2,\)"):
        stream_knn(q, [tmp_path / "a.npy", tmp_path / "b.npy"], 1)
    with pytest.raises(ValueError, match="2 features"):
        stream_knn(torch.zeros(2, 2), tmp_path / "a.npy", 1)
    with pytest.raises(ValueError, match="offers 3"):
        stream_knn(q, tmp_path / "a.npy", 4, exclude=[[0], [1]])
    with pytest.raises(ValueError, match="unknown kNN backend"):
        stream_knn(q, tmp_path / "a.npy", 1, backend="annoy")
    np.save(tmp_path / "obj.npy", np.array([[None]], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="Python objects"):
        stream_knn(q, tmp_path / "obj.npy", 1)
    np.savez(tmp_path / "c-00000.npz", samples=np.zeros((2, 3)))
    np.savez(tmp_path / "d-00000.npz", samples=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="several sets"):
        stream_knn(q, tmp_path, 1)


def test_merging_topk_breaks_ties_by_index():
    """Merging a running top-k with a chunk's is take_sorted on their concatenation."""
    dist = torch.tensor([[1.0, 2.0, 2.0]], dtype=torch.float64)
    idx = torch.tensor([[7, 9, 12]])
    new_dist = torch.tensor([[2.0, 0.5]], dtype=torch.float64)
    new_idx = torch.tensor([[3, 20]])
    d, i = take_sorted(torch.cat([dist, new_dist], 1), torch.cat([idx, new_idx], 1), 4)
    assert i.tolist() == [[20, 7, 3, 9]] and d.tolist() == [[0.5, 1.0, 2.0, 2.0]]


# ---------------------------------------------------------------------------- faiss

needs_faiss = pytest.mark.skipif(not faiss_knn.faiss_available(), reason="faiss not installed")


@needs_faiss
@pytest.mark.parametrize("n, m, d, k", [(7, 300, 16, 5), (64, 500, 40, 9), (30, 12, 3, 12)])
def test_faiss_agrees_with_builtin(n, m, d, k):
    """Few queries (faiss's direct path) and many (its BLAS path); k = m: every reference."""
    gen = torch.Generator().manual_seed(n)
    q, r = torch.randn(n, d, generator=gen), torch.randn(m, d, generator=gen)
    got, expected = faiss_knn_search(q, r, k), knn_search(q, r, k)
    assert torch.equal(got.idx, expected.idx)
    torch.testing.assert_close(got.dist, expected.dist, rtol=1e-9, atol=0)


@needs_faiss
def test_faiss_exclude_self_and_near_ties():
    rng = np.random.default_rng(9)
    x = torch.from_numpy(rng.normal(size=(80, 8)).astype(np.float32))
    got, expected = faiss_knn_search(x, x, 6, exclude_self=True), knn_search(x, x, 6,
                                                                             exclude_self=True)
    assert torch.equal(got.idx, expected.idx)
    torch.testing.assert_close(got.dist, expected.dist, rtol=1e-9, atol=0)
    far = (1000 + rng.normal(size=(400, 32)) * 1e-2).astype(np.float32)  # float32 cancellation
    got = faiss_knn_search(torch.from_numpy(far[:25]), torch.from_numpy(far), 5)
    bdist, bidx = brute_force_knn(far[:25], far, 5)
    np.testing.assert_array_equal(got.idx.numpy(), bidx)
    np.testing.assert_allclose(got.dist.numpy(), bdist, rtol=1e-12)


@needs_faiss
def test_faiss_rows_it_cannot_certify_fall_back():
    """References on a sphere around the query: float32 cannot rank them; float64 does."""
    rng = np.random.default_rng(11)
    r = rng.normal(size=(300, 200))
    r /= np.linalg.norm(r, axis=1, keepdims=True)
    r = (r * (1 + rng.normal(size=(300, 1)) * 1e-7)).astype(np.float32)
    q = np.zeros((3, 200), np.float32)
    got = faiss_knn_search(torch.from_numpy(q), torch.from_numpy(r), 4, margin=2)
    assert got.n_fallback == 3
    np.testing.assert_array_equal(got.idx.numpy(), brute_force_knn(q, r, 4)[1])


@needs_faiss
def test_streamed_with_faiss_equals_in_memory_builtin(tmp_path):
    rng = np.random.default_rng(10)
    ref = rng.normal(size=(57, 5)).astype(np.float32)
    folder = _write(tmp_path / "synth", ref, "npz")
    r = torch.from_numpy(ref)
    result = stream_knn(r, folder, 4, chunk_rows=9, backend="faiss", exclude=np.arange(57))
    _assert_same(result, knn_search(r, r, 4, exclude_self=True))


def test_missing_faiss_is_a_plain_error(monkeypatch):
    monkeypatch.setattr(faiss_knn, "faiss", None)
    with pytest.raises(ValueError, match="pip install faiss-cpu"):
        faiss_knn_search(torch.zeros(2, 2), torch.zeros(3, 2), 1)
    with pytest.raises(ValueError, match="needs faiss"):
        get_knn_backend("faiss")
