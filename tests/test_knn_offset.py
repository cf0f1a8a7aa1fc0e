"""Exact kNN on data far from the origin: the certificate must hold at any offset and scale."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from memgen.neighbours import (brute_force_knn, centred, knn_search, screen_error_bound, sq_norms,
                               unit_roundoff)

OFFSETS = st.one_of(st.sampled_from([0.0, 1.0, 2.0**10, 2.0**20, 2.0**24]),
                    st.floats(0.0, 2.0**24))
SCALES = st.floats(-3.0, 3.0).map(lambda e: 10.0**e)
DTYPES = st.sampled_from([np.float32, np.float64])


def _points(rng, n, d, offset, scale, layout):
    """n points: Gaussian, on a sphere (near-equidistant from its centre), or near the centre;
    all shifted by the same vector of coordinates in [offset/2, offset]."""
    shift = offset * np.random.default_rng(d).uniform(0.5, 1.0, size=d)
    direction = rng.normal(size=(n, d))
    if layout == "sphere":
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    elif layout == "centre":
        direction *= 1e-3
    return shift + scale * direction


def _check(dist, idx, q, r, k, exclude_self):
    """Distances equal float64 brute force; indices too, except among tied distances."""
    bdist, bidx = brute_force_knn(q, r, k, exclude_self=exclude_self)
    np.testing.assert_array_equal(dist, bdist)
    q64, r64 = torch.from_numpy(q).double(), torch.from_numpy(r).double()
    full = (q64[:, None, :] - r64[None, :, :]).square().sum(-1).sqrt().numpy()  # as brute force
    if exclude_self:
        np.fill_diagonal(full, np.inf)
    np.testing.assert_array_equal(np.take_along_axis(full, idx, 1), dist)
    assert all(len(set(row)) == k for row in idx.tolist())
    untied = (full[:, None, :] == dist[:, :, None]).sum(-1) == 1
    np.testing.assert_array_equal(idx[untied], bidx[untied])


@st.composite
def offset_problems(draw):
    """(q, r, k, exclude_self) with an offset up to 2**24 and a scale in 1e-3..1e3."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    d, m = draw(st.integers(1, 64)), draw(st.integers(2, 300))
    offset, scale = draw(OFFSETS), draw(SCALES)
    r = _points(rng, m, d, offset, scale, draw(st.sampled_from(["gauss", "sphere"])))
    r = r.astype(draw(DTYPES))
    exclude_self = draw(st.booleans())
    if exclude_self:
        q = r
    else:
        q = _points(rng, draw(st.integers(1, 60)), d, offset, scale,
                    draw(st.sampled_from(["gauss", "centre", "sphere"]))).astype(draw(DTYPES))
    k = draw(st.integers(1, min(m - int(exclude_self), 12)))
    return q, r, k, exclude_self


@settings(max_examples=150, deadline=None)
@given(problem=offset_problems(), margin=st.sampled_from([0, 2, 8]))
def test_offset_data_equal_brute_force(problem, margin):
    q, r, k, exclude_self = problem
    res = knn_search(torch.from_numpy(q), torch.from_numpy(r), k, exclude_self=exclude_self,
                     margin=margin)
    _check(res.dist.numpy(), res.idx.numpy(), q, r, k, exclude_self)


@settings(max_examples=100, deadline=None)
@given(problem=offset_problems(), margin=st.sampled_from([0, 2, 8]))
def test_faiss_offset_data_equal_brute_force(problem, margin):
    pytest.importorskip("faiss")
    from memgen.neighbours import faiss_knn_search

    q, r, k, exclude_self = problem
    res = faiss_knn_search(torch.from_numpy(q), torch.from_numpy(r), k,
                           exclude_self=exclude_self, margin=margin)
    _check(res.dist.numpy(), res.idx.numpy(), q, r, k, exclude_self)


def _ring_far_out(seed=0):
    """1000 float32 references on a ring of radius 100 around (2**20, 2**20), 200 queries
    within ~0.1 of its centre: every reference is at distance ≈ 100, so the screen must be
    accurate to a fraction of the rounding (ulp 0.125) of the raw coordinates."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, 2 * np.pi, 1000)
    r = (2.0**20 + 100 * np.stack([np.cos(t), np.sin(t)], 1)).astype(np.float32)
    q = (2.0**20 + 0.1 * rng.normal(size=(200, 2))).astype(np.float32)
    return q, r


@pytest.mark.parametrize("k", [1, 5])
def test_ring_at_two_to_the_twenty_is_exact(k):
    """Regression: references centred by center.float(), queries by the float64 centre;
    38 of the 105 rows the old certificate passed had a wrong nearest neighbour."""
    q, r = _ring_far_out()
    res = knn_search(torch.from_numpy(q), torch.from_numpy(r), k)
    _check(res.dist.numpy(), res.idx.numpy(), q, r, k, False)
    assert res.n_fallback < len(q)  # the certificate still does its job


@pytest.mark.parametrize("k", [1, 5])
def test_faiss_ring_at_two_to_the_twenty_is_exact(k):
    pytest.importorskip("faiss")
    from memgen.neighbours import faiss_knn_search

    q, r = _ring_far_out()
    for query in (q, q.astype(np.float64)):
        res = faiss_knn_search(torch.from_numpy(query), torch.from_numpy(r), k)
        _check(res.dist.numpy(), res.idx.numpy(), query, r, k, False)
        assert res.n_fallback < len(q)


@settings(max_examples=80, deadline=None)
@given(problem=offset_problems())
def test_screen_error_bound_covers_every_screened_value(problem):
    """|screened − exact| ≤ γ for every (query, reference) pair, faiss's values included."""
    q, r = torch.from_numpy(problem[0]), torch.from_numpy(problem[1])
    center = r.mean(0, dtype=torch.float64)
    q32, r32 = centred(q, center), centred(r, center)
    q_sq, r_sq = sq_norms(q32), sq_norms(r32)
    exact = (q.double()[:, None, :] - r.double()[None, :, :]).square().sum(-1)
    gamma = screen_error_bound(q_sq, r_sq.max(), q.shape[1], unit_roundoff(torch.float32))
    screened = torch.addmm(r_sq.float(), q32, r32.T, alpha=-2.0).double() + q_sq[:, None]
    assert ((screened - exact).abs() <= gamma[:, None]).all()
    faiss = pytest.importorskip("faiss")
    index = faiss.IndexFlatL2(q.shape[1])
    index.add(r32.numpy())
    value, col = index.search(q32.numpy(), len(r))
    faiss_exact = exact.gather(1, torch.from_numpy(col))
    assert ((torch.from_numpy(value).double() - faiss_exact).abs() <= gamma[:, None]).all()
