"""Each sweep stage's cache key covers exactly the settings it reads (issue #12, item 9;
issue #24, item 7: the whole config slice of its stage, no field left out for old caches).

A rerun with a changed setting must recompute exactly the stages that read it: the test
compares the cache folders and their DONE markers before and after, and the --dry-run
plan says the same thing before any work.
"""

from __future__ import annotations

import json
import typing
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
from test_cli import run

from memgen.diffusion.generate import Sampling
from memgen.diffusion.nets import get_preset
from memgen.diffusion.samplers import SAMPLERS
from memgen.diffusion.training import TrainSettings
from memgen.experiments.cache import STAGE_VERSION, stage_key
from memgen.experiments.config import AnalysisConfig, MeasureConfig, SweepConfig, load_config
from memgen.experiments.probe_stages import analysis_key
from memgen.experiments.stages import (CLASSIFY_UNKEYED, SAMPLING_UNKEYED, TRAIN_BUDGET,
                                       classify_key, generate_key, sampler_name, train_key)
from memgen.metrics.classify import ClassifyConfig
from memgen.metrics.protocols import PROTOCOLS, Protocol

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


def test_analysis_n_eigen_is_checked_and_keyed_by_its_name():
    """analysis.n_eigen (once analysis.k): the old name is refused, and the key hashes the
    field by its own name (STAGE_VERSION 4 dropped the former name from the key)."""
    config = load_config(TINY, ["analysis.curvature=true", "analysis.n_eigen=3"])
    assert config.analysis.n_eigen == 3
    with pytest.raises(ValueError, match="analysis.k: unknown key"):
        load_config(TINY, ["analysis.k=3"])
    with pytest.raises(ValueError, match="analysis.n_eigen: must be at least 1"):
        load_config(TINY, ["analysis.n_eigen=0"])
    folder = "classify-0123456789abcdef"
    reads = {f.name: getattr(config.analysis, f.name) for f in fields(AnalysisConfig)
             if not f.name.startswith(("landscape", "census"))}
    assert "n_eigen" in reads and "k" not in reads
    assert analysis_key(folder, config) == stage_key("analysis", folder, reads)


# ------------------------------------------------- each key hashes its stage's whole slice

TRAIN = np.arange(8, dtype=np.float32).reshape(4, 2)
HELDOUT = np.zeros((3, 2), np.float32)
NETWORK = Path(__file__).parents[1] / "configs" / "toy2d.yaml"


def _other(cls, name: str, value, config: SweepConfig):
    """Another value of field ``name`` of dataclass ``cls`` (the key functions do not check
    values; a sampler must exist, and differ from the one the config runs)."""
    if name == "sampler":
        return next(s for s in SAMPLERS if s != sampler_name(config))
    if name == "protocol":  # one that takes any rule (registered by the test)
        return "any-rule"
    if value is None:  # the first type of its Optional
        hint = typing.get_args(typing.get_type_hints(cls)[name])[0]
        return {int: 3, float: 0.5, str: "other", bool: True}.get(hint, (0.25, 0.75))
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, tuple):
        return (*value, 7)
    return f"{value}-other"


# section, the dataclass whose fields are iterated, the fields the key leaves out (and why:
# the train budget resumes one trajectory; a sample never depends on its batch; both kNN
# engines are exact with any block size; epsilon, bootstrap: only the aggregate reads them;
# compare: a classify stage of its own, of the compared section; the landscape and census
# settings: their stages' own keys), the config, the key
SLICES = {
    "train": (TrainSettings, {"iterations", "snapshots"}, NETWORK,
              lambda c: train_key(TRAIN, c)),
    "sample": (Sampling, {"batch_size"}, TINY,
               lambda c: generate_key("eval", 8, 1, "tk", None, c)),
    "measure": (MeasureConfig, {"memory_budget", "backend", "epsilon", "bootstrap",
                                "compare"}, TINY,
                lambda c: classify_key("e", "s", HELDOUT, c)),
    "analysis": (AnalysisConfig, {"landscape", "landscape_Ks", "landscape_sigma",
                                  "landscape_resolution", "census", "census_n",
                                  "census_sampler", "census_steps", "census_fractions",
                                  "census_seed"}, TINY,
                 lambda c: analysis_key("classify-0123456789abcdef", c)),
}


@pytest.mark.parametrize("section", SLICES)
def test_each_key_changes_with_every_field_it_reads_and_no_other(section, monkeypatch):
    monkeypatch.setitem(PROTOCOLS, "any-rule", Protocol("any-rule", "a protocol of the test"))
    cls, left_out, path, key = SLICES[section]
    config = load_config(path, ["analysis.basins=true"])
    assert key(config) is not None
    names = [f.name for f in fields(cls)]
    assert left_out < set(names)  # the test names real fields
    for name in names:
        part = getattr(config, section)
        other = _other(cls, name, getattr(part, name), config)
        changed = replace(config, **{section: replace(part, **{name: other})})
        assert (key(changed) != key(config)) == (name not in left_out), (section, name)


def test_the_slices_left_out_are_the_ones_named():
    """The module constants say the same as SLICES above (a new field left out of a key
    must be named there, with its reason)."""
    assert set(TRAIN_BUDGET) == SLICES["train"][1]
    assert set(SAMPLING_UNKEYED) == SLICES["sample"][1]
    assert set(CLASSIFY_UNKEYED) | {f.name for f in fields(MeasureConfig)} - {
        f.name for f in fields(ClassifyConfig)} == SLICES["measure"][1]
    assert STAGE_VERSION == 4
