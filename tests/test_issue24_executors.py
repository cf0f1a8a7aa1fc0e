"""Issue #24: an executor is described by its registry entry alone (EXECUTORS)."""

from __future__ import annotations

from pathlib import Path

import pytest

from memgen.errors import UserError
from memgen.experiments import executors
from memgen.experiments.config import CHOICES, load_config
from memgen.experiments.executors import EXECUTORS, Executor, ExecutorConfig, execute

TINY = Path(__file__).parents[1] / "configs" / "tiny.yaml"


@pytest.fixture
def backwards(monkeypatch):
    """A dummy executor, registered in the test only: runs the K values largest first and
    refuses more than 3 workers."""
    calls = []

    def run(run_one, Ks, ex, threads, bar, here):
        calls.append(list(Ks))
        return {K: (here or run_one)(K) for K in reversed(Ks)}

    def check(ex, device):
        if ex.workers > 3:
            raise UserError("executor.workers: backwards runs at most 3")

    monkeypatch.setitem(EXECUTORS, "backwards", Executor("backwards", run, "largest K first",
                                                          check=check))
    return calls


def test_a_registered_executor_is_a_config_choice_with_its_own_check(backwards):
    assert "backwards" in CHOICES["executor.kind"]
    config = load_config(TINY, ["executor.kind=backwards"])
    assert config.executor.kind == "backwards"
    with pytest.raises(UserError, match="backwards runs at most 3"):
        load_config(TINY, ["executor.kind=backwards", "executor.workers=4"])


def test_execute_runs_the_registered_executor_and_returns_results_in_K_order(backwards):
    out = execute(lambda K: K * 10, [9, 2, 4], ExecutorConfig(kind="backwards"),
                  progress=False)
    assert out == [20, 40, 90] and backwards == [[2, 4, 9]]


def test_an_unregistered_executor_is_refused_naming_the_registered_ones():
    with pytest.raises(UserError, match="executor.kind: 'nope' is not one of local, ray"):
        load_config(TINY, ["executor.kind=nope"])


def test_ray_check_comes_from_its_entry(monkeypatch):
    monkeypatch.setattr(executors.importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(UserError, match="executor.kind: ray needs the ray package"):
        EXECUTORS["ray"].check(ExecutorConfig(kind="ray"), "cpu")


def test_a_registered_executor_runs_a_sweep_from_the_cli(backwards, tmp_path):
    from click.testing import CliRunner

    from memgen.cli import cli

    result = CliRunner().invoke(cli, ["sweep", str(TINY), "--out", str(tmp_path / "run"),
                                      "--executor", "backwards", "--set", "Ks=[2,9]",
                                      "--set", "sample.n_eval=20", "--set", "sample.min_synth=40",
                                      "--set", "sample.steps=10", "--set", "measure.bootstrap=20"])
    assert result.exit_code == 0, result.output
    assert backwards == [[2, 9]] and (tmp_path / "run" / "fractions.csv").exists()
