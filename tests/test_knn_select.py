"""The selection of the exact kNN screen (group minima, threshold merges, pruned refinement)
against float64 brute force, on data built to stress it: wide blocks, ties, duplicates,
offsets far from the origin."""

from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from memgen.errors import UserError
from memgen.neighbours import brute_force_knn, knn_search
# the engine's modules, whose internals these tests patch and probe
from memgen.neighbours import (bf16 as bf16_module, exact as exact_module,
                               refine as refine_module, screen as screen_module)


def _data(kind: str, rng, n: int, m: int, d: int):
    """(queries, references) float32 of one of the stress kinds."""
    if kind == "grid":  # integer points: exact ties everywhere
        r = rng.integers(-2, 3, size=(m, d))
        q = rng.integers(-2, 3, size=(n, d))
    elif kind == "duplicates":  # every reference several times, queries among them
        base = rng.normal(size=(max(m // 4, 1), d))
        r = base[rng.integers(0, len(base), size=m)]
        q = r[rng.integers(0, m, size=n)] + (rng.random((n, 1)) < 0.5) * rng.normal(size=(n, d))
    elif kind == "offset":  # far from the origin, where float32 cancels
        r = 2.0**18 + rng.normal(size=(m, d))
        q = 2.0**18 + rng.normal(size=(n, d))
    else:
        r, q = rng.normal(size=(m, d)), rng.normal(size=(n, d))
    return q.astype(np.float32), r.astype(np.float32)


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 70), m=st.integers(64, 3000), d=st.integers(1, 16),
       kind=st.sampled_from(["normal", "grid", "duplicates", "offset"]),
       margin=st.integers(0, 3), groups=st.integers(4, 64), seed=st.integers(0, 2**31 - 1),
       bf16=st.booleans(), data=st.data())
def test_wide_blocks_equal_brute_force(n, m, d, kind, margin, groups, seed, bf16, data):
    """Reference blocks of 16·groups columns: with a small k + margin they take the grouped
    selection and many threshold merges; every width gives brute force's answer, with the
    bfloat16 pre-screen (its rows certified or handed to the float32 screen) or without."""
    rng = np.random.default_rng(seed)
    q, r = _data(kind, rng, n, m, d)
    k = data.draw(st.integers(1, 5))
    with mock.patch.object(screen_module, "_R_BLOCK_MAX", 16 * groups):
        res = knn_search(torch.from_numpy(q), torch.from_numpy(r), k, margin=margin,
                         bf16_screen=bf16)
    bdist, bidx = brute_force_knn(q, r, k)
    np.testing.assert_array_equal(res.idx.numpy(), bidx)
    np.testing.assert_array_equal(res.dist.numpy(), bdist)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), m=st.integers(40, 2000), d=st.integers(1, 16),
       kind=st.sampled_from(["normal", "grid", "duplicates", "offset"]),
       seed=st.integers(0, 2**31 - 1), bf16=st.booleans(), data=st.data())
def test_a_bound_keeps_every_neighbour_closer_than_it(n, m, d, kind, seed, bf16, data):
    """knn_search(bound=b): the neighbours closer than b[i] are brute force's, in its order,
    first; what follows is at least b[i] away, or (inf, −1) where the row was not refined.
    Bounds at brute force's own distances (ties), just off them, 0 and inf."""
    rng = np.random.default_rng(seed)
    q, r = _data(kind, rng, n, m, d)
    k = data.draw(st.integers(1, 5))
    bdist, bidx = brute_force_knn(q, r, k)
    col = rng.integers(0, k, size=n)
    bound = bdist[np.arange(n), col] * rng.choice([1.0, 1 - 1e-9, 1 + 1e-9], size=n)
    bound[rng.random(n) < 0.15] = 0.0
    bound[rng.random(n) < 0.15] = np.inf
    with mock.patch.object(screen_module, "_R_BLOCK_MAX", 16 * data.draw(st.integers(4, 32))):
        res = knn_search(torch.from_numpy(q), torch.from_numpy(r), k,
                         bound=torch.from_numpy(bound), bf16_screen=bf16)
    dist, idx = res.dist.numpy(), res.idx.numpy()
    closer = bdist < bound[:, None]
    np.testing.assert_array_equal(dist[closer], bdist[closer])
    np.testing.assert_array_equal(idx[closer], bidx[closer])
    rest = ~closer
    open_ = np.isfinite(dist[rest])
    assert (dist[rest][open_] >= np.broadcast_to(bound[:, None], dist.shape)[rest][open_]).all()
    assert (idx[rest][~open_] == -1).all()


@pytest.mark.parametrize("m", [5, 12, 33, 300])
@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("bounded", [False, True])
def test_screens_that_overflow_choose_nothing(m, bf16, bounded):
    """Coordinates near 3e19, whose squares overflow float32 (and bfloat16): a screen's NaN
    or infinite scores neither order, skip nor certify anything — not even where every
    reference is a candidate — and the float64 screen answers, as brute force does."""
    rng = np.random.default_rng(m)
    r = (3e19 * rng.normal(size=(m, 4))).astype(np.float32)
    q = (3e19 * rng.normal(size=(6, 4))).astype(np.float32)
    k = 2
    bdist, bidx = brute_force_knn(q, r, k)
    sdist, sidx = brute_force_knn(r, r, k, exclude_self=True)
    bound = (lambda d: torch.from_numpy(d[:, -1] * 1.5)) if bounded else (lambda d: None)
    res = knn_search(torch.from_numpy(q), torch.from_numpy(r), k, bound=bound(bdist),
                     bf16_screen=bf16)
    own = knn_search(torch.from_numpy(r), torch.from_numpy(r), k, exclude_self=True,
                     bound=bound(sdist), bf16_screen=bf16)
    np.testing.assert_array_equal(res.idx.numpy(), bidx)
    np.testing.assert_array_equal(res.dist.numpy(), bdist)
    np.testing.assert_array_equal(own.idx.numpy(), sidx)
    np.testing.assert_array_equal(own.dist.numpy(), sdist)


def test_a_positive_bound_whose_square_underflows_keeps_distance_zero():
    q = torch.ones(2, 3)
    res = knn_search(q, torch.ones(50, 3), 2, bound=torch.full((2,), 1e-170, dtype=torch.float64))
    assert (res.dist == 0).all() and (res.idx >= 0).all()


def test_a_bound_is_checked():
    q = torch.zeros(3, 2)
    for bad in (torch.zeros(2), torch.tensor([0.0, -1.0, 0.0]), torch.tensor([0.0, np.nan, 1.0])):
        with pytest.raises(UserError, match="bound"):
            knn_search(q, q, 1, bound=bad)


@settings(max_examples=30, deadline=None)
@given(m=st.integers(64, 1500), d=st.integers(1, 8), copies=st.integers(1, 3),
       margin=st.integers(0, 2), groups=st.integers(4, 32), seed=st.integers(0, 2**31 - 1),
       bf16=st.booleans(), data=st.data())
def test_wide_blocks_exclude_self(m, d, copies, margin, groups, seed, bf16, data):
    """The self-match is excluded inside grouped blocks too (its group minimum retaken),
    with the bfloat16 pre-screen or without."""
    rng = np.random.default_rng(seed)
    base = rng.integers(-3, 4, size=(m, d)).astype(np.float32)
    x = np.repeat(base, copies, axis=0)[rng.permutation(m * copies)]
    k = data.draw(st.integers(1, 4))
    with mock.patch.object(screen_module, "_R_BLOCK_MAX", 16 * groups):
        res = knn_search(torch.from_numpy(x), torch.from_numpy(x), k, exclude_self=True,
                         margin=margin, bf16_screen=bf16)
    bdist, bidx = brute_force_knn(x, x, k, exclude_self=True)
    np.testing.assert_array_equal(res.idx.numpy(), bidx)
    np.testing.assert_array_equal(res.dist.numpy(), bdist)


def test_merges_and_pruned_refinement_are_exercised(monkeypatch):
    """The fast paths run on a realistic shape, and the answer is brute force's."""
    calls = {"merge": 0, "refined_rows": 0}
    merge, refine = screen_module._merge_block, refine_module.candidate_sq_dist

    def counting_merge(*args):
        calls["merge"] += 1
        return merge(*args)

    def counting_refine(q, ref, idx):
        calls["refined_rows"] += int(idx.shape[1] == 7)  # k + _REFINE_EXTRA columns
        return refine(q, ref, idx)

    monkeypatch.setattr(screen_module, "_merge_block", counting_merge)
    monkeypatch.setattr(refine_module, "candidate_sq_dist", counting_refine)
    rng = np.random.default_rng(5)
    q, r = _data("normal", rng, 300, 20_000, 12)
    res = knn_search(torch.from_numpy(q), torch.from_numpy(r), 5)
    bdist, bidx = brute_force_knn(q, r, 5)
    np.testing.assert_array_equal(res.idx.numpy(), bidx)
    np.testing.assert_array_equal(res.dist.numpy(), bdist)
    assert calls["merge"] >= 3 and calls["refined_rows"] >= 1
    assert res.n_fallback == 0


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_screen_values_within_bound_of_exact(scale):
    """Every score of the augmented GEMM, plus ‖q̃‖², is within γ of the exact ‖q − r‖²."""
    rng = np.random.default_rng(11)
    q = torch.from_numpy((scale * (3 + rng.normal(size=(50, 300)))).astype(np.float32))
    r = torch.from_numpy((scale * (3 + rng.normal(size=(400, 300)))).astype(np.float32))
    screen = screen_module.Screen.build(r, torch.float32)
    q_rows, q_sq = screen.queries(q)
    screened = (q_rows @ screen.rows.T).double() + q_sq[:, None]
    exact = (q.double()[:, None] - r.double()[None]).square().sum(-1)
    gamma = screen.bound(q_sq)
    assert ((screened - exact).abs() <= gamma[:, None]).all()
    assert (screened - exact).abs().max() > 0  # the check is not vacuous


@pytest.mark.parametrize("scale, offset, d", [(1e-3, 3, 300), (1.0, 3, 300), (1e3, 3, 300),
                                              (1.0, 2.0**12, 300), (1.0, 3, 2048)])
def test_bf16_screen_brackets_the_exact_distances(scale, offset, d):
    """Every bfloat16 lower-bound score (Bf16Screen's rows, one bfloat16 GEMM; d = 2048
    splits its sums into blocks) gives lower ≤ ‖q − r‖² − ‖q̃‖² ≤ lower + width for every
    pair; the bracket is not loose beyond use (width < 4 % of ‖q̃‖² + max‖r̃‖²) and the lower
    bound not vacuous (it comes within a quarter of the width of the exact value)."""
    rng = np.random.default_rng(12)
    q = torch.from_numpy((scale * (offset + rng.normal(size=(60, d)))).astype(np.float32))
    r = torch.from_numpy((scale * (offset + rng.normal(size=(500, d)))).astype(np.float32))
    screen = screen_module.Screen.build(r, torch.float32)
    fast = bf16_module.Bf16Screen.of(screen)
    q_rows, q_sq = screen.queries(q)
    value = torch.mm(fast.queries(q_rows, q_sq), fast.rows.T).double()
    exact = (q.double()[:, None] - r.double()[None]).square().sum(-1) - q_sq[:, None]
    slack = fast.slack(q_sq)
    lower = fast.lower(value, slack)
    width = fast.width(value, slack, q_sq, torch.arange(len(r)).expand(len(q), -1))
    assert (lower <= exact).all() and (exact <= lower + width).all()
    assert (width < 0.04 * (q_sq[:, None] + screen.r_sq_max)).all()
    queries, rows = fast.queries(q_rows, q_sq), fast.rows
    allowance = -(queries[:, -1:].double() * rows[:, -1].double())  # ≈ κ‖q̃‖‖r̃‖
    plain = value + allowance  # the scores without the last column's product
    assert ((plain - exact).abs() / allowance).max() > 0.1


def test_round_down_bf16_never_rounds_up():
    x = torch.rand(100_000) * 1000
    y = bf16_module._round_down_bf16(x)
    assert (y.float() <= x).all()
    assert ((x - y.float()) <= x * 2.0**-7).all()  # within one bfloat16 step


def test_bf16_screen_certifies_most_rows_and_matches_brute_force(monkeypatch):
    """On a realistic shape the bfloat16 pass certifies most rows itself (the float32
    screen takes the rest) and the answer is the float32 screen's and brute force's."""
    shares = []
    real = exact_module.bf16_pass

    def spy(*args):
        out = real(*args)
        shares.append(float(out[2].double().mean()))
        return out

    monkeypatch.setattr(exact_module, "bf16_pass", spy)
    q, r = _data("normal", np.random.default_rng(6), 200, 5000, 300)
    res = knn_search(torch.from_numpy(q), torch.from_numpy(r), 5, bf16_screen=True)
    assert shares and min(shares) > 0.5 and res.n_fallback == 0
    # the float32 screen alone
    plain = knn_search(torch.from_numpy(q), torch.from_numpy(r), 5, bf16_screen=False)
    assert torch.equal(res.idx, plain.idx) and torch.equal(res.dist, plain.dist)
    bdist, bidx = brute_force_knn(q[:20], r, 5)  # brute force is slow: 20 of the queries
    np.testing.assert_array_equal(res.idx.numpy()[:20], bidx)
    np.testing.assert_array_equal(res.dist.numpy()[:20], bdist)


def test_bf16_screen_runs_only_where_it_pays(monkeypatch):
    """Automatic choice: a large problem of ≥ 256 dimensions on a CPU with AMX; never a
    small or low-dimensional one."""
    use = bf16_module.use_bf16
    monkeypatch.setattr(bf16_module, "_amx_bf16", lambda: True)
    assert use(10_000, 60_000, 784, torch.device("cpu"), 5)
    assert not use(100, 1000, 784, torch.device("cpu"), 5)
    assert not use(10_000, 1_000_000, 64, torch.device("cpu"), 5)
    assert not use(10_000, 60_000, 784, torch.device("cpu"), 40)  # k beyond its candidates
    monkeypatch.setattr(bf16_module, "_amx_bf16", lambda: False)
    assert not use(10_000, 60_000, 784, torch.device("cpu"), 5)
