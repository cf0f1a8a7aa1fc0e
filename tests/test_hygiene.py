"""Near-duplicates in a training set and the disjoint-halves comparison."""

import numpy as np
import pytest

from memgen.metrics.hygiene import compare_halves, near_duplicates


def _data(n=200, d=20, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def test_planted_near_duplicates_are_found_and_grouped():
    x = _data()
    rng = np.random.default_rng(1)
    for src, dst in ((5, 17), (30, 31), (31, 90)):  # a pair and a chain of three
        x[dst] = x[src] + 1e-3 * rng.standard_normal(x.shape[1])
    found = near_duplicates(x)
    assert set(map(tuple, found.pairs)) == {(5, 17), (30, 31), (31, 90), (30, 90)}
    assert [list(g) for g in found.groups] == [[5, 17], [30, 31, 90]]
    brute = np.linalg.norm(x[found.pairs[:, 0]] - x[found.pairs[:, 1]], axis=1)
    np.testing.assert_allclose(found.dist, brute, rtol=1e-5)
    assert found.threshold == pytest.approx(0.1 * np.median(found.nn_dist))


def test_random_data_has_no_duplicates_and_absolute_rule_uses_raw_distance():
    x = _data(seed=2)
    assert len(near_duplicates(x).pairs) == 0
    d1 = near_duplicates(x).nn_dist
    pairs = np.linalg.norm(x[:, None] - x[None], axis=-1) + np.diag(np.full(len(x), np.inf))
    brute = np.sort(pairs, axis=1)[:, 0]
    np.testing.assert_allclose(d1, brute, rtol=1e-5)
    cut = np.quantile(d1, 0.1)
    found = near_duplicates(x, threshold="absolute", delta=cut)
    assert len(np.unique(found.pairs)) == (d1 <= cut).sum()  # every close sample, once


def test_halves_distances_match_brute_force():
    a, b = _data(10, 6, 3), _data(10, 6, 4)
    ta, tb = _data(30, 6, 5), _data(30, 6, 6)
    h = compare_halves(a, b, ta, tb)
    np.testing.assert_allclose(h.between, np.linalg.norm(a - b, axis=1), rtol=1e-6)
    np.testing.assert_allclose(h.nearest_a,
                               np.linalg.norm(a[:, None] - ta[None], axis=-1).min(1), rtol=1e-6)
    assert compare_halves(a, a.copy(), ta, tb).summary()["share_closer_to_each_other"] == 1.0


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="at least 2"):
        near_duplicates(_data(1))
    with pytest.raises(ValueError, match="threshold must be"):
        near_duplicates(_data(5), threshold="ratio")
    with pytest.raises(ValueError, match="differ in shape"):
        compare_halves(_data(5), _data(6), _data(5), _data(5))


def test_duplicates_command_writes_pairs_and_refuses_bad_input(tmp_path):
    from click.testing import CliRunner

    from memgen.cli import cli

    x = np.random.default_rng(7).uniform(-1, 1, (40, 1, 8, 8)).astype(np.float32)
    x[11] = x[3]
    np.savez(tmp_path / "t.npz", samples=x)
    out = tmp_path / "dup"
    result = CliRunner().invoke(cli, ["hygiene", "duplicates", "--train", str(tmp_path / "t.npz"),
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "duplicates.csv").read_text().splitlines()[1].startswith("3,11,0")
    assert (out / "pairs.png").exists()
    bad = CliRunner().invoke(cli, ["hygiene", "duplicates", "--train", str(tmp_path / "t.npz"),
                                   "--data", "circle", "--out", str(tmp_path / "bad")])
    assert bad.exit_code != 0 and "either --train FILE or --data NAME" in bad.output
    assert not (tmp_path / "bad").exists()


def test_halves_command_on_two_toy_models(tmp_path):
    from click.testing import CliRunner

    from memgen.cli import cli

    runner = CliRunner()
    for half in ("1", "2"):
        result = runner.invoke(cli, ["train", "--data", "circle", "--K", "8", "--half", half,
                                     "--preset", "toy-mlp", "--iterations", "30",
                                     "--out", str(tmp_path / f"m{half}")])
        assert result.exit_code == 0, result.output
    a = np.load(tmp_path / "m1" / "train.npz")["samples"]
    b = np.load(tmp_path / "m2" / "train.npz")["samples"]
    assert len(a) == len(b) == 8 and not (a[:, None] == b[None]).all(-1).any()  # disjoint
    result = runner.invoke(cli, ["hygiene", "halves", "--checkpoint-a",
                                 str(tmp_path / "m1" / "checkpoint.pt"), "--checkpoint-b",
                                 str(tmp_path / "m2" / "checkpoint.pt"), "--n", "20",
                                 "--steps", "20", "--out", str(tmp_path / "h")])
    assert result.exit_code == 0, result.output
    rows = np.loadtxt(tmp_path / "h" / "halves.csv", delimiter=",", skiprows=1)
    sa, sb = (np.load(tmp_path / "h" / f"samples-{n}.npz")["samples"] for n in "ab")
    np.testing.assert_allclose(rows[:, 0], np.linalg.norm(sa - sb, axis=1), rtol=1e-5)
    assert not (sa == sb).all()  # different models, same noise
