"""Issue #24, model sources as objects (memgen.diffusion.sources).

A source registered in the registry alone runs a sweep end to end; nothing outside the
registry compares model.kind or a source name with a string; each real source keeps the
stage keys, settings and identity records of the code it replaced.
"""

import ast
import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from model_fixtures import scripted_eps

import memgen.diffusion.sources as sources
from memgen.cli import cli
from memgen.diffusion.identity import ModelSource, array_sha256
from memgen.diffusion.loaders import load_denoiser
from memgen.diffusion.sources import SOURCES, LoadedModel, LoadOptions, Source
from memgen.experiments.config import CHOICES, load_config
from memgen.experiments.stages import (exports_reference, sampler_name, schedule_family,
                                       split_rule, state_file, train_key)
from memgen.io import load_samples
from memgen.provenance import file_sha256

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

ROOT = Path(__file__).parents[1]
TINY = ROOT / "configs" / "tiny.yaml"


class MeanDenoiser:
    """D(x, σ) = the training set's mean, at every σ: a training-free stand-in."""

    def __init__(self, train: torch.Tensor):
        self.mean = train.mean(0)
        self.calls = 0

    def __call__(self, x, sigma):
        self.calls += 1
        return self.mean.to(x.dtype).expand_as(x).clone()


class DummySource(Source):
    """The mean of S_K, on the schedule of model.schedule; needs no training."""

    name, flag, sweep_kind = "dummy", "--dummy", "dummy"
    model_fields = ("schedule",)
    no_network = "the mean is not a network"
    analysable = False
    built: list = []  # the denoisers built, to count their calls

    def build(self, train, options: LoadOptions) -> LoadedModel:
        patterns = torch.as_tensor(train).to(options.device, torch.float32)
        denoiser = MeanDenoiser(patterns)
        self.built.append(denoiser)
        return LoadedModel(denoiser, sources.parse_schedule(options.schedule),
                           tuple(patterns.shape[1:]), torch.float32,
                           ModelSource(self.name, None, lambda: array_sha256(train)))

    def sweep_model(self, model, state, train, device) -> LoadedModel:
        return self.load(train, LoadOptions(schedule=model.schedule, device=device))

    def schedule_family(self, model) -> str:
        return model.schedule

    def untrained(self, model, K) -> str:
        return "the mean"


@pytest.fixture
def dummy(monkeypatch):
    source = DummySource()
    source.built = []
    monkeypatch.setitem(SOURCES, "dummy", source)
    return source


def _sweep(out, *extra):
    return CliRunner().invoke(cli, ["sweep", str(TINY), "--out", str(out), "--set",
                                    "model.kind=dummy", "--set", "Ks=[2,9]", "--set",
                                    "sample.n_eval=20", "--set", "sample.min_synth=40",
                                    "--set", "sample.steps=10", *extra])


# ------------------------------------------------------------- a source from the registry


def test_a_registered_source_runs_a_sweep_end_to_end(tmp_path, dummy):
    assert "dummy" in CHOICES["model.kind"] and list(CHOICES["model.kind"]) == [
        "network", "exact", "checkpoints", "smoothed", "els", "gaussian", "dummy"]
    plan = _sweep(tmp_path / "run", "--dry-run")
    assert plan.exit_code == 0, plan.output
    assert "K=2: train — (the mean needs no training)" in plan.output
    result = _sweep(tmp_path / "run")
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    lines = (run / "fractions.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in lines[1:]] == ["2", "9"]
    assert json.loads((run / "config.json").read_text())["model"]["kind"] == "dummy"
    assert not list((run / "cache").glob("train-*"))  # it does not train
    # its denoiser made the samples: one per set and K, each set one batch, called at
    # every level of the 10-level VE ladder but σ_min (no final denoise)
    assert [d.calls for d in dummy.built] == [9, 9, 9, 9]
    assert not (run / "reference").exists()  # exports_reference: False


def test_a_registered_source_answers_the_sweep_questions(tmp_path, dummy):
    config = load_config(TINY, ["model.kind=dummy", "model.schedule=vp"])
    assert schedule_family(config) == "vp" and sampler_name(config) == "ddpm"
    assert split_rule(config) == "memgen" and exports_reference(config) is False
    assert state_file(config, 2, None, None) is None
    with pytest.raises(ValueError, match=r"model.preset: has no effect with model.kind = "
                                         r"dummy \(the mean is not a network\); remove it"):
        load_config(TINY, ["model.kind=dummy", "model.preset=toy-mlp"])
    with pytest.raises(ValueError, match="only for model.kind = checkpoints"):
        load_config(TINY, ["model.kind=dummy", "model.path=x"])
    with pytest.raises(ValueError, match="model.kind = dummy: analysis"):
        load_config(TINY, ["model.kind=dummy", "analysis.basins=true"])
    model = load_denoiser(dummy=np.ones((3, 2), np.float32), schedule="ve")
    assert model.source.identity() == {"kind": "dummy",
                                       "sha256": array_sha256(np.ones((3, 2), np.float32))}
    with pytest.raises(ValueError, match=r"exactly one model source \(checkpoint, exact, "
                                         r"torchscript, diffusers, reference, smoothed, els, gaussian, dummy\), got none"):
        load_denoiser()


def test_an_unregistered_kind_is_refused():
    with pytest.raises(ValueError, match="model.kind: 'dummy' is not one of network, exact, "
                                         "checkpoints"):
        load_config(TINY, ["model.kind=dummy"])
    with pytest.raises(TypeError, match="unexpected keyword argument 'dummy'"):
        load_denoiser(dummy=np.ones((3, 2), np.float32))


# ------------------------------------------------------- no kind switch outside the registry

NAMES = {"network", "exact", "checkpoints", "checkpoint", "torchscript", "diffusers",
         "reference"}
OWN_FLOOR = ("experiments", "cli", "api.py", "diffusion/loaders.py")


def _literals(node) -> set[str]:
    return {n.value for n in ast.walk(node) if isinstance(n, ast.Constant)
            and isinstance(n.value, str)}


def _is_kind(node) -> bool:
    """model.kind, config.model.kind, m.kind (not net.kind or executor.kind)."""
    return (isinstance(node, ast.Attribute) and node.attr == "kind"
            and ((isinstance(node.value, ast.Attribute) and node.value.attr == "model")
                 or (isinstance(node.value, ast.Name) and node.value.id in ("model", "m"))))


def test_no_model_kind_or_source_name_comparison_outside_the_registry():
    """No ``model.kind == "..."`` anywhere but the registry, and no comparison with a
    source name or model.kind value in the sweep, the CLI, the API and the loader."""
    src = ROOT / "src" / "memgen"
    found = []
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src).as_posix()
        if rel == "diffusion/sources.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Compare):
                continue
            sides = [node.left, *node.comparators]
            if any(_is_kind(s) for s in sides) and _literals(node):
                found.append(f"{rel}:{node.lineno}")
            elif rel.startswith(OWN_FLOOR) and _literals(node) & NAMES:
                found.append(f"{rel}:{node.lineno}")
    assert found == []


def test_the_scan_finds_a_kind_switch():
    """The check above can fail: it flags the old code's forms."""
    for text in ('if config.model.kind == "exact": pass', 'x = m.kind in ("a", "b")'):
        compare = next(n for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Compare))
        assert any(_is_kind(s) for s in [compare.left, *compare.comparators])
    assert _literals(ast.parse('name == "diffusers"')) & NAMES


# -------------------------------------------------- the real sources keep what they gave

# stage keys and settings of the code before the registry (main at 22fd400), for a fixed
# S_K and checkpoint files of fixed bytes; the keys as of STAGE_VERSION 4 (issue #24 item 7:
# with STAGE_VERSION 3 the exact and checkpoint keys are those of 22fd400, 86dbaee830730e5c,
# aa1416d4688af07a, 25b0af5556edd945, 4c23a40291124442; the network keys now also hash
# train.ema_warmup and train.compile at their defaults)
BEFORE = {
    "exact": ("70fc3c711f8db795", "euler_maruyama", "ve", "memgen", False, None),
    "exact-vp": ("248da92b2b71b90a", "ddpm", "vp", "memgen", False, None),
    "network": ("7f1eeb54301590f7", "euler_maruyama", "ve", "memgen", False, None),
    "network-unet": ("f0e41d84f91cc0cf", "ddpm", "vp", "memgen", False, None),
    "checkpoints": ("f4b569ea3003daf2", "ddpm", "vp", "reference", True, "ck/4.pt"),
    "checkpoints-yaml": ("da47215af1d95ddf", "ddpm", "vp", "reference", True, "ck/4.pt"),
}


def test_each_sweep_kind_keeps_its_train_key_and_settings():
    tmp = Path(tempfile.mkdtemp())
    (tmp / "ck").mkdir()
    (tmp / "ck" / "4.pt").write_bytes(b"four")
    (tmp / "their.yaml").write_text("model: {}\n")
    train = np.arange(8, dtype=np.float32).reshape(4, 2)
    overrides = {
        "exact": [], "exact-vp": ["model.schedule=vp"], "network": ["model.kind=network"],
        "network-unet": ["model.kind=network", "model.preset=digits-8"],
        "checkpoints": ["model.kind=checkpoints", f"model.path={tmp / 'ck'}",
                        "data.split=reference"],
        "checkpoints-yaml": ["model.kind=checkpoints", f"model.path={tmp / 'ck'}",
                             f"model.reference_config={tmp / 'their.yaml'}"]}
    for name, sets in overrides.items():
        c = load_config(TINY, sets)
        state = state_file(c, 4, None, None)
        got = (train_key(train, c), sampler_name(c), schedule_family(c), split_rule(c),
               exports_reference(c), None if state is None else state.relative_to(tmp).as_posix())
        assert got == BEFORE[name], name


def test_identity_records_are_the_content_hashes(tmp_path):
    """Each source's ModelSource: its name as kind and the sha256 of its content."""
    train = np.random.default_rng(0).uniform(-1, 1, (5, 1, 4, 4)).astype(np.float32)
    exact = load_denoiser(exact=train)
    assert exact.source.identity() == {"kind": "exact", "sha256": array_sha256(train)}
    script = scripted_eps(tmp_path / "eps.pt", torch.zeros(1, 4, 4))
    ts = load_denoiser(torchscript=script, shape=(1, 4, 4))
    assert ts.source.identity() == {"kind": "torchscript", "sha256": file_sha256(script)}
    assert ts.source.label() == f"torchscript {script}"
    config = {"image_size": 8}
    h = hashlib.sha256(file_sha256(script).encode())
    h.update(b"config " + json.dumps(config, sort_keys=True, default=repr).encode())
    assert sources.reference_sha256(script, config) == h.hexdigest()
    h = hashlib.sha256(file_sha256(script).encode())
    h.update(b"config file " + file_sha256(script).encode())
    assert sources.reference_sha256(script, script) == h.hexdigest()


def test_the_sweep_builds_each_model_as_load_denoiser_does():
    """sweep_model of the exact source: load_denoiser's exact denoiser, bit for bit."""
    train = np.random.default_rng(1).uniform(-1, 1, (6, 2)).astype(np.float32)
    config = load_config(TINY, [])
    swept = sources.model_source(config.model).sweep_model(config.model, None, train, "cpu")
    direct = load_denoiser(exact=train, schedule="ve")
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(swept.denoiser(x, 0.3), direct.denoiser(x, 0.3))
    assert swept.schedule == direct.schedule and swept.source.sha256 == direct.source.sha256


def test_registry_names_flags_and_kinds():
    assert list(SOURCES) == ["checkpoint", "exact", "torchscript", "diffusers", "reference",
                             "smoothed", "els", "gaussian"]
    assert [s.flag for s in SOURCES.values()] == ["--checkpoint", "--exact", "--torchscript",
                                                  "--diffusers", "--reference-checkpoint",
                                                  "--smoothed", "--els", "--gaussian"]
    assert {k: s.name for k, s in sources.SWEEP_KINDS.items()} == {
        "network": "checkpoint", "exact": "exact", "checkpoints": "reference",
        "smoothed": "smoothed", "els": "els", "gaussian": "gaussian"}
    assert [s.name for s in SOURCES.values() if s.trains] == ["checkpoint"]


# ------------------------------------------------- a source's flag on memgen generate


class FileDummySource(DummySource):
    """The dummy source as the CLI gives it: a training set's sample file."""

    help = "The mean of this training set as the denoiser (a test's)."
    schedule_option = True  # --schedule is its

    def option_value(self, path, *, config=None, input_range=None):
        return load_samples(path, self.flag, input_range)


def test_a_registered_source_has_its_flag_on_generate(tmp_path, monkeypatch):
    source = FileDummySource()
    source.built = []
    monkeypatch.setitem(SOURCES, "dummy", source)
    for command in ("generate", "diagnose"):
        text = CliRunner().invoke(cli, [command, "--help"], terminal_width=200).output
        assert "--dummy FILE" in text
        assert "The mean of this training set as the denoiser" in text
    train = np.random.default_rng(0).uniform(-1, 1, (6, 2)).astype(np.float32)
    np.savez(tmp_path / "train.npz", samples=train)
    result = CliRunner().invoke(cli, ["generate", "--dummy", str(tmp_path / "train.npz"),
                                      "--schedule", "ve", "--n", "3", "--steps", "5",
                                      "--sampler", "heun", "--out", str(tmp_path / "gen")])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "gen" / "samples.json").read_text())
    assert record["identity"]["model"] == {"kind": "dummy", "sha256": array_sha256(train)}
    assert record["model_path"] == str(tmp_path / "train.npz")
    assert [d.calls for d in source.built] == [8]  # Heun on 5 levels: 4 steps of 2 calls
    none = CliRunner().invoke(cli, ["generate", "--n", "3", "--out", str(tmp_path / "x")])
    assert none.exit_code == 1
    assert ("give exactly one of --checkpoint, --exact, --torchscript, --diffusers, "
            "--reference-checkpoint, --smoothed, --els, --gaussian, --dummy") in none.output
    two = CliRunner().invoke(cli, ["diagnose", "--dummy", "a", "--exact", "b", "--out", "y"])
    assert ("give exactly one of --checkpoint, --exact, --torchscript, --diffusers, --smoothed, "
            "--els, --gaussian, --dummy") in two.output
