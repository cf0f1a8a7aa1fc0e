"""Exact kNN: chunked GEMM search equals brute force, including near-ties and duplicates."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import memgen
from memgen.neighbours import brute_force_knn, knn, knn_search, take_sorted


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), m=st.integers(2, 120), d=st.integers(1, 24),
       budget=st.integers(8, 20_000), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_chunked_equals_brute_force(n, m, d, budget, seed, data):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, d)).astype(np.float32)
    r = rng.normal(size=(m, d)).astype(np.float32)
    k = data.draw(st.integers(1, m))
    dist, idx = knn(q, r, k, memory_budget=budget)  # bytes: memgen.knn's are MiB
    bdist, bidx = brute_force_knn(q, r, k)
    np.testing.assert_array_equal(idx, bidx)
    np.testing.assert_array_equal(dist, bdist)


@settings(max_examples=40, deadline=None)
@given(m=st.integers(2, 80), d=st.integers(1, 10), copies=st.integers(1, 6),
       budget=st.integers(8, 5_000), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_self_exclusion_with_duplicates(m, d, copies, budget, seed, data):
    rng = np.random.default_rng(seed)
    base = rng.integers(-3, 4, size=(m, d)).astype(np.float32)  # integer grid: many exact ties
    x = np.repeat(base, copies, axis=0)[rng.permutation(m * copies)]
    k = data.draw(st.integers(1, len(x) - 1))
    dist, idx = knn(x, x, k, exclude_self=True, memory_budget=budget)  # bytes
    bdist, bidx = brute_force_knn(x, x, k, exclude_self=True)
    np.testing.assert_array_equal(idx, bidx)
    np.testing.assert_array_equal(dist, bdist)
    assert not (idx == np.arange(len(x))[:, None]).any()
    if copies > 1:  # a duplicate is found at distance exactly 0, not dropped with the self-match
        assert (dist[:, 0] == 0).all()


def test_near_ties_that_float32_gemm_misorders():
    """Large offsets make ‖q‖² + ‖r‖² − 2qᵀr cancel in float32; the result stays exact."""
    rng = np.random.default_rng(0)
    d = 64
    offset = np.full(d, 1000.0)
    r = offset + rng.normal(size=(3000, d)) * 1e-2
    q = offset + rng.normal(size=(50, d)) * 1e-2
    q32, r32 = q.astype(np.float32), r.astype(np.float32)
    # Without centring and refinement float32 GEMM gets these wrong:
    naive = (q32**2).sum(1)[:, None] + (r32**2).sum(1)[None] - 2 * q32 @ r32.T
    bdist, bidx = brute_force_knn(q32, r32, 5)
    assert (np.argsort(naive, axis=1, kind="stable")[:, :5] != bidx).any()
    res = knn_search(torch.from_numpy(q32), torch.from_numpy(r32), 5, memory_budget=40_000)
    np.testing.assert_array_equal(res.idx.numpy(), bidx)
    np.testing.assert_array_equal(res.dist.numpy(), bdist)


def test_fallback_rows_are_exact_when_screen_cannot_certify():
    """A cloud of points at almost equal distance defeats the screen; fallback fixes it."""
    rng = np.random.default_rng(1)
    d = 300
    r = rng.normal(size=(500, d))
    r /= np.linalg.norm(r, axis=1, keepdims=True)  # all references on a sphere around q = 0
    r *= 1 + rng.normal(size=(500, 1)) * 1e-7
    q = np.zeros((3, d))
    res = knn_search(torch.from_numpy(q.astype(np.float32)),
                     torch.from_numpy(r.astype(np.float32)), 4, margin=2)
    bdist, bidx = brute_force_knn(q.astype(np.float32), r.astype(np.float32), 4)
    assert res.n_fallback == 3
    np.testing.assert_array_equal(res.idx.numpy(), bidx)


def test_tensor_in_tensor_out_and_image_shapes():
    q = torch.randn(7, 1, 4, 4)
    r = torch.randn(30, 1, 4, 4)
    dist, idx = memgen.knn(q, r, 3)
    assert isinstance(dist, torch.Tensor) and dist.dtype == torch.float64
    assert idx.shape == (7, 3) and idx.dtype == torch.int64
    bdist, bidx = brute_force_knn(q.reshape(7, -1), r.reshape(30, -1), 3)
    np.testing.assert_array_equal(idx.numpy(), bidx)
    assert (np.diff(dist.numpy(), axis=1) >= 0).all()


def test_distances_are_euclidean_not_squared():
    dist, idx = memgen.knn(np.array([[0.0, 0.0]]), np.array([[3.0, 4.0], [6.0, 8.0]]), 2)
    np.testing.assert_array_equal(dist, [[5.0, 10.0]])
    np.testing.assert_array_equal(idx, [[0, 1]])


@pytest.mark.parametrize("query, ref, k, exclude_self, message", [
    (np.zeros((3, 4)), np.zeros((5, 3)), 1, False, "shape"),
    (np.zeros((0, 4)), np.zeros((5, 4)), 1, False, "empty"),
    (np.zeros((3, 4)), np.zeros((5, 4)), 6, False, "k=6"),
    (np.zeros((5, 4)), np.zeros((5, 4)), 5, True, "offers 4"),
    (np.zeros((3, 4)), np.zeros((5, 4)), 1, True, "same set"),
    (np.full((3, 4), np.nan), np.zeros((5, 4)), 1, False, "NaN"),
    (np.zeros(3), np.zeros((5, 4)), 1, False, "leading sample axis"),
])
def test_bad_input(query, ref, k, exclude_self, message):
    with pytest.raises(ValueError, match=message):
        memgen.knn(query, ref, k, exclude_self=exclude_self)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    q, r = torch.randn(100, 32), torch.randn(2000, 32)
    cpu = knn_search(q, r, 5)
    gpu = knn_search(q.cuda(), r.cuda(), 5)
    assert gpu.idx.device.type == "cuda"
    torch.testing.assert_close(gpu.idx.cpu(), cpu.idx, rtol=0, atol=0)


@pytest.mark.parametrize("grid", [False, True])
def test_large_blocks_use_group_preselection_exactly(grid):
    """Blocks of 8192 columns go through the group-minimum pre-selection; still exact."""
    rng = np.random.default_rng(7)
    if grid:  # integer points: massive exact ties across groups
        r = rng.integers(-2, 3, size=(20_000, 4)).astype(np.float32)
        q = rng.integers(-2, 3, size=(40, 4)).astype(np.float32)
    else:
        r = rng.normal(size=(20_000, 8)).astype(np.float32)
        q = rng.normal(size=(40, 8)).astype(np.float32)
    dist, idx = memgen.knn(q, r, 7)
    bdist, bidx = brute_force_knn(q, r, 7)
    np.testing.assert_array_equal(idx, bidx)
    np.testing.assert_array_equal(dist, bdist)
    dist, idx = memgen.knn(r[:2048], r[:2048], 3, exclude_self=True)
    bdist, bidx = brute_force_knn(r[:2048], r[:2048], 3, exclude_self=True)
    np.testing.assert_array_equal(idx, bidx)


@pytest.mark.parametrize("k", [1, 4, 9, 12])
def test_take_sorted_matches_numpy_lexsort(k):
    """The one top-k merge: the k smallest by (distance, index), ties to the smaller index,
    as numpy's lexsort gives it; merging two lists equals selecting from their union."""
    rng = np.random.default_rng(3)
    d = rng.integers(0, 4, size=(6, 9)).astype(np.float64)  # many exact ties
    idx = np.stack([rng.permutation(100)[:9] for _ in range(6)])
    got_d, got_i = take_sorted(torch.from_numpy(d), torch.from_numpy(idx), k)
    order = [np.lexsort((i_row, d_row))[:k] for d_row, i_row in zip(d, idx)]
    np.testing.assert_array_equal(got_i.numpy(), np.take_along_axis(idx, np.array(order), 1))
    np.testing.assert_array_equal(got_d.numpy(), np.take_along_axis(d, np.array(order), 1))
    a_d, a_i = take_sorted(torch.from_numpy(d[:, :5]), torch.from_numpy(idx[:, :5]), k)
    b_d, b_i = take_sorted(torch.from_numpy(d[:, 5:]), torch.from_numpy(idx[:, 5:]), k)
    m_d, m_i = take_sorted(torch.cat([a_d, b_d], 1), torch.cat([a_i, b_i], 1), k)
    torch.testing.assert_close(m_i, got_i, rtol=0, atol=0)
    torch.testing.assert_close(m_d, got_d, rtol=0, atol=0)
