"""Issue #25, item 2: the attractor census (memgen.probes.census, memgen census)."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy.cluster.hierarchy import fcluster, linkage

import memgen.probes.census as C
from memgen.cli.main import cli
from memgen.data import CIRCLE_SPLIT_SEED, circle_pool, nested_indices
from memgen.errors import UserError
from memgen.experiments.landscape import EXTENT, square_grid
from memgen.memory.attractors import Memory, find_attractors, retrieve
from memgen.probes.census import (census, census_at_radii, mixture_coefficients, radius_rules,
                                  single_linkage, write_census)


def _same_partition(a, b) -> bool:
    pairs = set(zip(np.asarray(a).tolist(), np.asarray(b).tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.mark.parametrize("seed", range(6))
def test_single_linkage_equals_scipy_brute_force(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(80, 5)) * rng.uniform(0.3, 3.0, size=(80, 1))
    radius = float(rng.uniform(0.5, 2.0))
    brute = fcluster(linkage(x, "single"), radius, "distance")
    assert _same_partition(single_linkage(x, radius), brute)
    monkeypatch.setattr(C, "_PAIR_BUDGET", 8 * 80 * 3)  # blocks of 3 rows: the chunked path
    chunked = single_linkage(x, radius)
    assert _same_partition(chunked, brute)
    assert chunked[0] == 0 and (np.diff(np.maximum.accumulate(chunked)) <= 1).all()


def test_single_linkage_is_exact_at_the_radius():
    """Points exactly r apart are linked, r + 1 ulp apart are not; chains link."""
    x = np.array([[0.0], [0.5], [1.0], [np.nextafter(1.5, 2.0)]])
    assert single_linkage(x, 0.5).tolist() == [0, 0, 0, 1]
    assert single_linkage(x, 0.25).tolist() == [0, 1, 2, 3]


def test_radius_rule_is_a_fraction_of_the_heldout_median():
    train = np.array([[0.0, 0.0], [10.0, 0.0]])
    held = np.array([[1.0, 0.0], [0.0, 3.0], [10.0, -2.0], [0.0, 4.0], [13.0, 4.0]])
    rules = radius_rules(train, held, [0.5, 0.1])
    assert [r.heldout_median for r in rules] == [3.0, 3.0]  # median of 1, 3, 2, 4, 5
    assert [r.radius for r in rules] == [1.5, pytest.approx(0.3)]
    with pytest.raises(UserError, match="positive"):
        radius_rules(train, held, [0.0])
    with pytest.raises(UserError, match="median distance"):
        radius_rules(train, train, [0.5])


def test_planted_midpoint_is_a_spurious_mixture_with_its_coefficients():
    rng = np.random.default_rng(3)
    train = rng.normal(size=(10, 16)) * 3
    mid = (train[3] + train[7]) / 2
    endpoints = np.concatenate([mid + 1e-3 * rng.normal(size=(5, 16)),  # a recurring mixture
                                train[2] + 1e-3 * rng.normal(size=(4, 16)),  # a memory
                                rng.normal(size=(3, 16)) * 3])  # three loners
    found = census(endpoints, train, radius=0.05)
    assert found.n_clusters == 5
    assert [found.count(k) for k in C.KINDS] == [1, 1, 3]
    assert [found.mass(k) for k in C.KINDS] == pytest.approx([4 / 12, 5 / 12, 3 / 12])
    assert found.training_image[found.kinds == "memorized"].tolist() == [2]
    (s,) = found.spurious
    assert s.size == 5 and sorted(s.nearest) == [3, 7] and s.shared == 1.0
    assert s.t == pytest.approx(0.5, abs=2e-3) and s.ratio == pytest.approx(1.0, abs=2e-3)
    assert s.offset < 5e-3 and s.segment == pytest.approx(np.linalg.norm(train[3] - train[7]))
    t, offset, _ = mixture_coefficients(torch.tensor([1.0, 1.0]), torch.tensor([0.0, 0.0]),
                                        torch.tensor([4.0, 0.0]))
    assert (t, offset) == (0.25, 1.0)


def test_theory_engine_spurious_minimum_is_a_spurious_attractor_of_the_census():
    """The unit circle, K = 9, β = 20 (memgen landscape's panel): retrieval on the empirical
    energy from the landscape's grid of starts. The census finds the engine's six attractors
    with their basins; at a radius below the spurious minimum's offset from its nearest
    pattern (1.24e-3) it is a spurious attractor of the census, beside a symmetric
    two-pattern mixture (t = ½, d1/d2 = 1) that the engine's weight rule (w_max > ½)
    calls memorized by 1e-8; at 1 % of the held-out median the census sees only the
    mixture, at 50 % none."""
    pool = circle_pool(60_000, seed=9)
    order = nested_indices(len(pool), 1000, CIRCLE_SPLIT_SEED)
    train, held = torch.from_numpy(pool[order[:9]]).double(), pool[order[9:]]
    memory, starts = Memory(train, 20.0, "kernel"), square_grid(EXTENT, 40)
    theory = find_attractors(memory, starts, tol=1e-9, max_iter=5000)
    assert theory.count("spurious") == 1
    endpoints = retrieve(memory, starts, tol=1e-9, max_iter=5000).endpoints
    run = census_at_radii(endpoints, train, held, [0.004, 0.01, 0.5])
    low, mid, high = (row.endpoints for row in run.rows)
    assert low.n_clusters == len(theory.points) == 6
    assert sorted(low.basins) == pytest.approx(sorted(theory.basin), abs=1e-12)
    assert _same_partition(low.labels, theory.assignment)
    spurious_theory = theory.points[theory.kinds == "spurious"][0].numpy()
    centres = [endpoints[low.labels == s.cluster].mean(0).numpy() for s in low.spurious]
    assert min(np.linalg.norm(c - spurious_theory) for c in centres) < 1e-6
    assert float(theory.basin[theory.kinds == "spurious"][0]) in [s.mass for s in low.spurious]
    assert low.count("spurious") == 3  # the minimum, the mixture, a displaced memory
    (mixture, _) = mid.spurious  # 2.6e-3: the minimum is now within r of pattern 7
    assert mid.count("spurious") == 2 and mixture.t == pytest.approx(0.5, abs=1e-5)
    assert mixture.ratio > 0.9999 and mixture.offset < 1e-6 and mixture.shared == 1.0
    assert high.count("spurious") == 0 and high.mass("memorized") == 1.0


def test_cli_exact_denoiser_at_low_noise_has_exactly_K_memorized_attractors(tmp_path):
    rng = np.random.default_rng(1)
    K = 4
    np.savez(tmp_path / "train.npz", samples=rng.uniform(-1, 1, (K, 1, 4, 4)).astype(np.float32))
    np.savez(tmp_path / "held.npz", samples=rng.uniform(-1, 1, (30, 1, 4, 4)).astype(np.float32))
    out = tmp_path / "census"
    args = ["census", "--exact", str(tmp_path / "train.npz"), "--n", "64", "--steps", "50",
            "--heldout", str(tmp_path / "held.npz"), "--radius-fraction", "0.05", "0.2",
            "--out", str(out), "-q"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "census.json").read_text())
    assert [r["fraction"] for r in record["radii"]] == [0.05, 0.2]
    for row in record["radii"]:
        assert row["n_clusters"] == row["n_memorized"] == K
        assert row["mass_memorized"] == 1.0 and row["n_spurious"] == 0
        assert sum(row["basins"]) == pytest.approx(1.0) and row["null_n_spurious"] == 0
    assert (out / "census.csv").read_text().count("\n") == 3
    assert (out / "endpoints.npz").is_file()
    provenance = json.loads((out / "provenance.json").read_text())
    assert set(provenance["inputs"]) == {"train", "heldout", "endpoints"}
    again = CliRunner().invoke(cli, args[:-1] + ["--sampler", "ddpm", "--overwrite", "-q"])
    assert again.exit_code == 1 and "deterministic" in again.output


def test_writer_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    train = rng.normal(size=(6, 3))
    ends = np.concatenate([np.repeat((train[:1] + train[1:2]) / 2, 3, 0), train[2:4]])
    run = census_at_radii(ends, train, rng.normal(size=(20, 3)), [0.01])
    paths = write_census(tmp_path, run)
    lines = paths[1].read_text().splitlines()
    assert len(lines) == 2 and lines[0].startswith("fraction,radius,cluster,size")
    record = json.loads(paths[2].read_text())
    assert record["radii"][0]["spurious"][0]["size"] == 3
    assert record["radii"][0]["basin_kinds"] == ["spurious", "memorized", "memorized"]


def test_census_precision_is_the_share_of_each_kind_inside_the_heldout_manifold():
    """Endpoints planted on the held-out data (one pair, two singletons) and far off it
    (another pair): the spurious precision is the brute-force share of spurious endpoints
    inside a k = 5 ball of the held-out reference part, and the held-out baseline's
    precision is its own share."""
    from memgen.metrics.quality import heldout_split
    rng = np.random.default_rng(3)
    held = rng.normal(size=(200, 4))
    train = held[:3] + 50.0  # far from everything: nothing is memorized
    on = held[[7, 7, 11, 12]] + 1e-3 * np.eye(4)[[0, 1, 2, 3]]
    off = np.array([[30.0, 0, 0, 0], [30.0, 0, 0, 1e-3]])
    ends = np.vstack([on, off])
    row = census_at_radii(ends, train, held, [0.001]).rows[0]
    ref_idx, base_idx = heldout_split(len(held), len(ends))
    ref = held[ref_idx]
    d = np.linalg.norm(ref[:, None] - ref[None], axis=-1)
    radii = np.sort(d, axis=1)[:, 5]  # the 5th nearest other reference point
    inside = lambda p: bool((np.linalg.norm(ref - p, axis=1) < radii).any())
    kinds = row.endpoints.kinds[row.endpoints.labels]
    spurious = [inside(p) for p, k in zip(ends, kinds) if k == "spurious"]
    assert sorted(kinds) == ["singleton", "singleton", "spurious", "spurious", "spurious",
                             "spurious"]
    assert row.precision("spurious") == pytest.approx(np.mean(spurious)) == 0.5
    assert row.precision("memorized") != row.precision("memorized")  # NaN: no such endpoint
    assert row.heldout_precision == pytest.approx(np.mean([inside(p) for p in held[base_idx]]))
