"""Issue #24, item 1: one config tree, read by OmegaConf from the library's own dataclasses."""

from __future__ import annotations

import json
import typing
from types import SimpleNamespace
from dataclasses import dataclass, field, fields, make_dataclass
from pathlib import Path

import click
import pytest

import memgen.api as api
import memgen.experiments.config as config_module
from memgen.cli.measure import classify_options
from memgen.diffusion.generate import GenerateConfig, Sampling
from memgen.diffusion.training import TrainConfig, TrainSettings
from memgen.errors import UserError
from memgen.experiments.config import (MeasureConfig, SampleConfig, SweepConfig, as_dict,
                                       load_config, structured)
from memgen.metrics.classify import ClassifyConfig, option

ROOT = Path(__file__).parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
BEFORE = json.loads((Path(__file__).parent / "data" / "issue24_configs.json").read_text())


def _within(new: dict, old: dict) -> dict:
    """``new`` restricted to the keys of ``old`` (a section may have gained fields)."""
    return {k: _within(new[k], v) if isinstance(v, dict) and isinstance(new[k], dict)
            else new[k] for k, v in old.items()}


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_every_shipped_config_loads_to_the_values_of_the_hand_written_loader(name):
    new = as_dict(load_config(ROOT / "configs" / name))
    assert _within(new, BEFORE[name]) == BEFORE[name]


def test_the_pin_covers_every_shipped_config_of_its_time_and_the_newer_ones_load():
    shipped = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
    assert set(BEFORE) <= set(shipped)
    for name in set(shipped) - set(BEFORE):  # configs added after the hand-written loader
        load_config(ROOT / "configs" / name)


def test_set_reads_an_exponent_float_and_nested_and_list_values():
    config = load_config(TINY, ["train.lr=1e-3", "Ks=[2, 4]", "train.snapshots=[1, 2]",
                                "model.kind=network", "model.net.kind=mlp",
                                "model.net.width=7", "sample.clip_denoised=true",
                                "sample.clip_range=[-2, 2]"])
    assert config.train.lr == 1e-3 and isinstance(config.train.lr, float)
    assert config.Ks == (2, 4) and config.train.snapshots == (1, 2)
    assert config.model.net.width == 7 and config.model.net.depth == 4  # NetConfig's default
    assert config.sample.clip_range == (-2.0, 2.0)


def test_extra_dict_overrides_merge_like_set(tmp_path):
    config = load_config(TINY, ["executor.workers=3"], {"executor": {"cpus_per_task": 2.0}})
    assert (config.executor.workers, config.executor.cpus_per_task) == (3, 2.0)


@pytest.mark.parametrize("override, message", [
    ("train.lrr=1", "train.lrr: unknown key (did you mean lr? known: iterations,"),
    ("measure.metrc=l2", "measure.metrc: unknown key (did you mean metric?"),
    ("train.iterations=many", "train.iterations: expected int, got 'many'"),
    ("Ks=two", "Ks: expected tuple, got 'two'"),
    ("train=5", "train: expected a mapping, got 5"),
    ("model.net.width=5", "model.net.kind: required"),
    ("model={kind: exact, kind: network}", "the key 'kind' is given twice"),
])
def test_omegaconf_errors_are_one_line_naming_the_key(override, message):
    with pytest.raises(UserError) as err:
        load_config(TINY, [override])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_key_given_twice_in_a_file_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("Ks: [2]\ntrain:\n  lr: 1e-3\n  lr: 2e-3\n")
    with pytest.raises(UserError, match="the key 'lr' is given twice, line 4"):
        load_config(path)


def test_the_sections_are_the_library_configs():
    hints = typing.get_type_hints(SweepConfig)
    assert hints["train"] is TrainSettings and issubclass(TrainConfig, TrainSettings)
    assert issubclass(SampleConfig, Sampling) and issubclass(GenerateConfig, Sampling)
    assert issubclass(MeasureConfig, ClassifyConfig)
    # no field of the library's configs is declared again by the sweep's sections
    for section, base in ((SampleConfig, Sampling), (MeasureConfig, ClassifyConfig)):
        own = set(section.__annotations__)
        assert not own & {f.name for f in fields(base)}, section
    assert [f.name for f in fields(MeasureConfig)] == [
        *(f.name for f in fields(ClassifyConfig)), "bootstrap", "epsilon", "compare"]


def test_generate_config_resolves_the_unset_sampling_settings():
    config = GenerateConfig(n=1)
    assert (config.sampler, config.prior, config.clip_range) == ("ddpm", "standard",
                                                                 (-1.0, 1.0))


def test_classify_options_are_exactly_the_config_fields():
    command = click.command()(classify_options(lambda **kw: kw))
    names = [p.name for p in command.params]
    assert names == [f.name for f in fields(ClassifyConfig)]
    assert {p.opts[0] for p in command.params} == {
        "--" + f.name.replace("_", "-") for f in fields(ClassifyConfig)}


def _with_extra_field(monkeypatch):
    """ClassifyConfig with one more field (a bool flag), put where the three readers find it."""
    extended = make_dataclass(
        "ClassifyConfig", [("extra_flag", bool, field(default=False, metadata=option(
            "A new classify option.")))], bases=(ClassifyConfig,), frozen=True)
    extended.__module__ = ClassifyConfig.__module__
    monkeypatch.setattr(api, "ClassifyConfig", extended)
    measure = make_dataclass("MeasureConfig", [("bootstrap", int, 1000), ("epsilon", float, 0.1)],
                             bases=(extended,), frozen=True)
    sweep = make_dataclass("SweepConfig", [("measure", measure, field(default_factory=measure))],
                           bases=(SweepConfig,), frozen=True)
    return extended, sweep


def test_a_new_classify_field_reaches_the_cli_the_api_and_the_sweep(monkeypatch):
    import memgen.cli.measure as measure_cli

    extended, sweep = _with_extra_field(monkeypatch)
    monkeypatch.setattr(measure_cli, "ClassifyConfig", extended)
    command = click.command()(measure_cli.classify_options(lambda **kw: kw))
    flag = [p for p in command.params if p.name == "extra_flag"]
    assert flag and flag[0].opts == ["--extra-flag"] and flag[0].is_flag
    assert flag[0].help == "A new classify option."
    seen = {}
    monkeypatch.setattr(api, "classify_sets", lambda *a, **k: seen.setdefault("config", a[4]))
    import numpy as np
    data = np.zeros((4, 2), np.float32) + np.arange(4, dtype=np.float32)[:, None]
    api.classify(data, data, extra_flag=True)
    assert seen["config"].extra_flag is True
    with pytest.raises(TypeError, match="unexpected keyword argument 'extra_flg'"):
        api.classify(data, data, extra_flg=True)
    assert structured(sweep, {"measure": {"extra_flag": True}}).measure.extra_flag is True


def test_a_measure_field_that_changes_labels_changes_the_classify_key():
    """Every ClassifyConfig field is keyed but the exact kNN engine's knobs
    (memgen.experiments.stages.CLASSIFY_UNKEYED; tests/test_stage_keys.py checks them all)."""
    from memgen.experiments.stages import classify_key
    import numpy as np

    heldout = np.zeros((3, 2), np.float32)
    base = load_config(TINY)
    same = load_config(TINY, ["measure.backend=faiss", "measure.memory_budget=67108864"])
    other = load_config(TINY, ["measure.dedup=true"])
    assert classify_key("e", "s", heldout, base) == classify_key("e", "s", heldout, same)
    assert classify_key("e", "s", heldout, base) != classify_key("e", "s", heldout, other)


@pytest.mark.parametrize("budget", [512, 0, -1])
def test_a_sweep_memory_budget_below_one_mib_is_refused_as_a_likely_mib(budget):
    # the sweep's key is ClassifyConfig's, in bytes; 512 meant as memgen classify's MiB
    # would otherwise run with blocks of 512 bytes
    with pytest.raises(UserError, match=r"measure\.memory_budget: .* bytes is less than 1 MiB"):
        config_module.load_config(TINY, [f"measure.memory_budget={budget}"])
    config = config_module.load_config(TINY, ["measure.memory_budget=536870912"])
    assert config.measure.memory_budget == 512 * 2**20


@pytest.mark.parametrize("options, message", [
    ({"calibrate": "no"}, "calibrate: expected true or false, got 'no'"),
    ({"dedup": "false"}, "dedup: expected true or false"),
    ({"k": 2.5}, "k: expected an integer, got 2.5"),
    ({"k": "3"}, "k: expected an integer"),
    ({"alpha": True}, "alpha: expected a number, got True"),
    ({"rule": 3}, "rule: expected text"),
])
def test_classify_options_of_the_wrong_type_are_refused_not_coerced(options, message):
    # before, memgen.classify(calibrate="no") calibrated ("no" is true)
    with pytest.raises(UserError, match=message):
        ClassifyConfig(**options)


@pytest.mark.parametrize("override, message", [
    ("name=${oops}", r"name: \$\{\.\.\.\} interpolations are not read"),
    ("Ks[0]=5", "set a list whole"),
    ("measure.calibrate=2", "measure.calibrate: expected true or false, got 2"),
    ("name=yes", "name: expected text, got True"),
    ("notes=1.10", "notes: expected text, got 1.1"),
])
def test_omegaconf_conversions_that_would_be_silent_are_refused(override, message):
    with pytest.raises(UserError, match=message):
        load_config(TINY, [override])


def test_a_dotted_key_in_the_file_is_refused(tmp_path):
    path = tmp_path / "dot.yaml"
    path.write_text("Ks: [2, 9]\n'measure.delta_m': 0.2\nmeasure: {delta_m: 0.3}\n")
    with pytest.raises(UserError, match="the key 'measure.delta_m' has a dot; nest it"):
        load_config(path)


def test_a_calibrated_sweep_is_refused_until_it_reports_its_thresholds():
    with pytest.raises(UserError, match="measure.calibrate: a sweep would label each K"):
        load_config(TINY, ["measure.calibrate=true"])


def test_api_sweep_takes_one_override_as_text(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(api, "run_sweep",
                        lambda config, *a, **k: seen.append(config.Ks) or SimpleNamespace(
                            capacities=None))
    api.sweep(TINY, tmp_path / "run", "Ks=[2, 9]", progress=False)
    assert seen == [(2, 9)]


def test_the_api_refuses_a_negative_seed_and_a_state_it_would_not_use(tmp_path):
    import numpy as np

    x = np.zeros((4, 2), np.float32) + np.arange(4, dtype=np.float32)[:, None]
    with pytest.raises(UserError, match="seed: a seed is a non-negative integer, got -1"):
        api.classify(x, x + 0.5, seed=-1)
    with pytest.raises(UserError, match="state: a restart file is for a streamed synth"):
        api.classify(x, x + 0.5, x + 0.25, state=str(tmp_path / "state.npz"))
