"""memgen phase and memgen landscape end to end (small), and the fast retrieval step."""

import csv

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from memgen.cli.main import cli, expand_lists
from memgen.memory import energy as E
from memgen.memory.attractors import Memory
from memgen.memory.energy import circle_ring_radius


def test_list_options_expand():
    assert expand_lists(["phase", "--K", "2", "9", "--sigma", "0.1", "0.2", "--out", "d"]) == [
        "phase", "--K", "2", "--K", "9", "--sigma", "0.1", "--sigma", "0.2", "--out", "d"]
    assert expand_lists(["--K", "2", "--seed", "3"]) == ["--K", "2", "--seed", "3"]


@pytest.mark.parametrize("kind", ["kernel", "dense_am"])
def test_retrieval_step_equals_weights_times_patterns(kind):
    g = torch.Generator().manual_seed(0)
    y = torch.randn(30, 4, generator=g, dtype=torch.float64)
    x = torch.randn(6, 4, generator=g, dtype=torch.float64) * 3
    memory = Memory(y, 2.5, kind)
    torch.testing.assert_close(memory.retrieval_step(x), memory.weights(x) @ y)


def test_ring_radius_solves_the_radial_score():
    for gamma in (2.0, 20.0, 200.0):
        r = circle_ring_radius(gamma=gamma)
        score = E.circle_radial_score(torch.tensor(r, dtype=torch.float64), gamma)
        assert abs(float(score)) < 1e-9
    assert circle_ring_radius(0.5) == 0.0  # γ < 1: the minimum is the centre


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_phase_cli_circle(tmp_path):
    out = tmp_path / "phase"
    result = CliRunner().invoke(cli, ["phase", "--data", "circle", "--sigma", "0.1", "0.05",
                                      "--K", "2", "5", "--n-starts", "64", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = _read(out / "phase.csv")
    assert [(float(r["sigma"]), int(r["K"])) for r in rows] == [
        (0.1, 2), (0.1, 5), (0.05, 2), (0.05, 5)]
    for r in rows:
        shares = float(r["share_memorized"]) + float(r["share_spurious"]) + float(r["share_saddle"])
        assert shares == pytest.approx(1.0)
        assert float(r["rule_memorized"]) + float(r["rule_spurious"]) + float(
            r["rule_generalized"]) == pytest.approx(1.0)
    two = rows[0]  # K = 2 at σ = 0.1: two isolated memories
    assert int(two["n_memorized"]) == 2 and int(two["n_spurious"]) == 0
    assert float(two["rule_memorized"]) == 1.0
    assert (out / "phase.png").stat().st_size > 1000


def test_phase_cli_rejects_bad_K(tmp_path):
    result = CliRunner().invoke(cli, ["phase", "--sigma", "0.1", "--K", "1", "--out",
                                      str(tmp_path / "x")])
    assert result.exit_code != 0 and "K must lie in" in result.output
    assert not (tmp_path / "x").exists()


def test_landscape_cli(tmp_path):
    out = tmp_path / "land"
    result = CliRunner().invoke(cli, ["landscape", "--K", "2", "9", "--beta", "20",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = _read(out / "attractors.csv")
    assert set(rows[0]) == {"K", "x", "y", "energy", "kind"}
    k2 = [r for r in rows if r["K"] == "2"]
    assert len(k2) == 2 and all(r["kind"] == "memorized" for r in k2)
    ring = [r for r in rows if r["K"] == "continuum"]
    assert len(ring) == 1 and float(ring[0]["x"]) == pytest.approx(circle_ring_radius(20.0))
    # Attractors of K = 2 sit at the training points (displaced by the other one's pull).
    radii = np.hypot([float(r["x"]) for r in k2], [float(r["y"]) for r in k2])
    np.testing.assert_allclose(radii, 1.0, atol=1e-2)
    assert (out / "landscape.png").stat().st_size > 1000


def test_landscape_cli_draws_a_trained_model_beside_the_exact_one(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["train", "--data", "circle", "--K", "2", "--preset", "toy-mlp",
                                 "--iterations", "300", "--lr", "2e-3",
                                 "--out", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    out = tmp_path / "land"
    result = runner.invoke(cli, ["landscape", "--K", "2", "--checkpoint",
                                 str(tmp_path / "m" / "checkpoint.pt"), "--resolution", "16",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = _read(out / "learned_attractors.csv")
    assert {r["K"] for r in rows} == {"2"}
    assert sum(int(r["count"]) for r in rows) == 2000  # every sample in one attractor
    assert (out / "learned_landscape.png").stat().st_size > 1000
    bad = runner.invoke(cli, ["landscape", "--checkpoint", str(tmp_path / "nope.pt"),
                              "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and not (tmp_path / "x").exists()
