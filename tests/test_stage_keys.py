"""Each sweep stage's cache key covers exactly the settings it reads (issue #12, item 9).

A rerun with a changed setting must recompute exactly the stages that read it: the test
compares the cache folders and their DONE markers before and after, and the --dry-run
plan says the same thing before any work.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_cli import run

from memgen.diffusion.nets import get_preset
from memgen.experiments.config import AnalysisConfig, SweepConfig, load_config
from memgen.experiments.probe_stages import analysis_key
from memgen.experiments.sweep import train_key

TINY = Path(__file__).parents[1] / "configs" / "tiny.yaml"
BASE = ["--set", "Ks=[2, 9]"]


def _stages(run_dir: Path) -> dict[str, float]:
    """Cache folder → the modification time of its DONE marker."""
    return {p.parent.name: p.stat().st_mtime_ns for p in (run_dir / "cache").glob("*/DONE.json")}


def _sweep(run_dir, *sets):
    result = run("sweep", TINY, "--out", run_dir, *BASE, *[a for s in sets for a in ("--set", s)])
    assert result.exit_code == 0, result.output
    return result


def _kinds(names) -> list[str]:
    return sorted(name.split("-")[0] for name in names)


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("keys") / "run"
    _sweep(run_dir)
    return run_dir


@pytest.mark.parametrize("change", ["sample.batch_size=64", "measure.epsilon=0.2",
                                    "measure.bootstrap=50", "data.root=/moved/elsewhere"])
def test_settings_that_change_no_stage_rerun_nothing(done, change):
    before = _stages(done)
    _sweep(done, change)
    assert _stages(done) == before


def test_a_threshold_reruns_classify_only(done):
    before = _stages(done)
    _sweep(done, "measure.delta_m=0.25")
    after = _stages(done)
    new = set(after) - set(before)
    assert _kinds(new) == ["classify", "classify"]  # one per K; eval and synth reused
    assert {k: after[k] for k in before} == before


def test_sampling_steps_regenerate_and_reclassify(done):
    before = _stages(done)
    _sweep(done, "sample.steps=100")
    new = set(_stages(done)) - set(before)
    assert _kinds(new) == ["classify"] * 2 + ["eval"] * 2 + ["synth"] * 2


def test_dry_run_names_every_stage_and_why(done):
    cached = run("sweep", TINY, "--out", done, *BASE, "--dry-run")
    assert cached.exit_code == 0, cached.output
    lines = cached.output.splitlines()
    for stage in ("eval", "synth", "classify"):
        assert sum(line.strip().startswith(f"{stage}:") for line in lines) == 2
    assert all("cached" in line for line in lines if line.startswith("  "))
    changed = run("sweep", TINY, "--out", done, *BASE, "--set", "measure.delta_m=0.2",
                  "--dry-run")
    text = changed.output
    assert text.count("classify: to run (new settings)") == 2
    assert text.count("eval: cached") == 2 and text.count("synth: cached") == 2
    assert not (done / "cache" / "nothing").exists()
    before = _stages(done)
    assert _stages(done) == before  # a dry run does no work


def test_train_key_holds_the_data_content_and_the_full_network():
    config = load_config(Path(__file__).parents[1] / "configs" / "images-cpu.yaml")
    train = np.zeros((4, 1, 8, 8), np.float32)
    key = train_key(train, config)
    moved = load_config(Path(__file__).parents[1] / "configs" / "images-cpu.yaml",
                        ["data.root=/elsewhere"])
    assert train_key(train, moved) == key  # where the data came from does not matter
    assert train_key(train + 1, config) != key  # what the data are does
    net = {**get_preset("digits-8").to_dict(), "dim": 64}
    wider = load_config(Path(__file__).parents[1] / "configs" / "images-cpu.yaml",
                        [f"model.net={json.dumps(net)}", "model.preset=null"])
    assert train_key(train, wider) != key  # a changed architecture never reuses a cache


def test_analysis_key_hashes_n_eigen_under_its_former_name_k():
    """analysis.n_eigen was analysis.k: the key still names it k, so analysis caches made
    before the rename stay valid (keys stored before the rename)."""
    folder = "classify-0123456789abcdef"
    basins = SweepConfig(analysis=AnalysisConfig(basins=True))
    curvature = SweepConfig(analysis=AnalysisConfig(curvature=True, n_eigen=7))
    assert analysis_key(folder, basins) == "88e05bf77203565b"
    assert analysis_key(folder, curvature) == "a73c106852fec764"
    config = load_config(TINY, ["analysis.curvature=true", "analysis.n_eigen=3"])
    assert config.analysis.n_eigen == 3
    with pytest.raises(ValueError, match="analysis.k: unknown key"):
        load_config(TINY, ["analysis.k=3"])
    with pytest.raises(ValueError, match="analysis.n_eigen: must be at least 1"):
        load_config(TINY, ["analysis.n_eigen=0"])
