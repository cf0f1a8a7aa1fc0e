"""Issue #24, items 6 and 7: a sweep hands back what it measured (SweepResult) and the CLI
prints from it, not from files read back; the stage keys are checked in test_stage_keys.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_cli import run

import memgen.cli.experiments as cli_experiments
from memgen.experiments.config import load_config
from memgen.experiments.sweep import SweepResult, run_sweep
from memgen.io import read_csv_rows
from memgen.metrics.capacity import read_fraction_table

TINY = Path(__file__).parents[1] / "configs" / "tiny.yaml"
SMALL = ["Ks=[2, 9]", "sample.n_eval=60", "sample.min_synth=60", "sample.steps=40"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    folder = tmp_path_factory.mktemp("swept") / "run"
    return run_sweep(load_config(TINY, SMALL), folder, progress=False)


def test_run_sweep_returns_what_its_files_hold(swept):
    run_dir = swept.run
    assert isinstance(swept, SweepResult)
    assert [r.K for r in swept.results] == [2, 9]
    assert swept.rows == tuple(read_csv_rows(run_dir / "fractions.csv"))
    table = read_fraction_table(run_dir / "fractions.csv")
    for name in ("K", "fractions", "lo", "hi", "null"):
        np.testing.assert_array_equal(getattr(swept.table, name), getattr(table, name))
    assert swept.capacities.as_dict() == json.loads((run_dir / "capacities.json").read_text())
    for r in swept.results:
        assert r.summary == json.loads((r.folder / "summary.json").read_text())
    assert swept.timescale is None and not (run_dir / "timescale.json").exists()


def test_the_cli_prints_the_result_not_the_run_folders_files(swept, tmp_path, monkeypatch):
    """The same screen from the SweepResult alone: with fractions.csv and capacities.json
    gone and a stale timescale.json in the folder (an earlier run's), nothing changes."""
    calls = []

    def spy(*args, **kwargs):
        calls.append(run_sweep(*args, **kwargs))
        return calls[-1]

    out = tmp_path / "run"
    monkeypatch.setattr(cli_experiments, "run_sweep", spy)
    first = run("sweep", TINY, "--out", out, *[a for s in SMALL for a in ("--set", s)])
    assert first.exit_code == 0, first.output
    lines = first.stdout.splitlines()  # the progress bars go to stderr
    assert [line.split()[0] for line in lines[1:3]] == ["2", "9"] and len(lines) == 7
    assert lines[-1] == f"report: {out / 'report.html'}" and "τ_mem" not in first.stdout
    (out / "fractions.csv").unlink()
    (out / "capacities.json").unlink()
    (out / "timescale.json").write_text(json.dumps({"tau_mem": {"2": 1}}))
    monkeypatch.setattr(cli_experiments, "run_sweep", lambda *a, **k: calls[0])
    again = run("sweep", TINY, "--out", out, *[a for s in SMALL for a in ("--set", s)])
    assert again.exit_code == 0, again.output
    assert again.stdout == first.stdout


def test_a_rerun_removes_the_outputs_of_the_earlier_config_that_it_makes_no_more(tmp_path):
    # a sweep rerun without snapshots (or analyses) left the earlier time axis and figures
    # beside the new table, and the CLI printed their τ_mem as current
    folder = tmp_path / "run"
    run_sweep(load_config(TINY, SMALL), folder, progress=False)
    for name in ("timescale.json", "fractions_steps.csv", "phase_map.png", "critical.png"):
        (folder / name).write_text("from an earlier config")
    result = run_sweep(load_config(TINY, SMALL), folder, progress=False)
    assert result.timescale is None
    for name in ("timescale.json", "fractions_steps.csv", "phase_map.png", "critical.png"):
        assert not (folder / name).exists()
    assert (folder / "fractions.csv").exists() and (folder / "fractions.png").exists()
