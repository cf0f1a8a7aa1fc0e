"""memgen sweep: end to end, resume after a crash, minimal recomputation, strict configs."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import memgen.experiments.stages as stages_module
import memgen.experiments.sweep as sweep_module
from memgen.cli import cli
from memgen.experiments.config import load_config

TINY = Path(__file__).parents[1] / "configs" / "tiny.yaml"


def _run(out, *extra):
    result = CliRunner().invoke(cli, ["sweep", str(TINY), "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    return result


def test_tiny_sweep_end_to_end(tmp_path):
    result = _run(tmp_path / "run")
    run = tmp_path / "run"
    for name in ("fractions.csv", "capacities.json", "fractions.png", "config.json"):
        assert (run / name).exists(), name
    lines = (run / "fractions.csv").read_text().splitlines()
    assert lines[0].startswith("K,memorized,memorized_lo,memorized_hi,spurious")
    assert [line.split(",")[0] for line in lines[1:]] == ["2", "9", "64"]
    caps = json.loads((run / "capacities.json").read_text())
    assert set(caps) >= {"MC", "SC", "GC"}
    assert "SC:" in result.output
    # The exact denoiser memorizes at K = 2 far more than held-out real data would.
    first = lines[1].split(",")
    assert float(first[1]) > 0.5


def test_resume_after_a_crash_gives_identical_fractions(tmp_path, monkeypatch):
    _run(tmp_path / "whole")
    calls = {"n": 0}
    real = stages_module.classify_stage

    def crash_on_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated crash between stages")
        return real(*args, **kwargs)

    monkeypatch.setattr(stages_module, "classify_stage", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        sweep_module.run_sweep(load_config(TINY), tmp_path / "parts", progress=False)
    monkeypatch.setattr(stages_module, "classify_stage", real)
    # A stage killed inside: a generation folder without its DONE marker and a torn shard.
    torn = next((tmp_path / "parts" / "cache").glob("synth-*"))
    (torn / "DONE.json").unlink(missing_ok=True)
    shard = next(torn.glob("synth-0000*.npz"))
    shard.write_bytes(shard.read_bytes()[:100])
    _run(tmp_path / "parts")
    assert ((tmp_path / "whole" / "fractions.csv").read_text()
            == (tmp_path / "parts" / "fractions.csv").read_text())


def test_changed_threshold_reruns_only_classification(tmp_path, monkeypatch):
    _run(tmp_path / "run")
    before = {p.name for p in (tmp_path / "run" / "cache").iterdir()}
    calls = []
    real = stages_module.generate_stage

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(stages_module, "generate_stage", spy)
    _run(tmp_path / "run", "--set", "measure.delta_s=0.2")
    after = {p.name for p in (tmp_path / "run" / "cache").iterdir()}
    new = after - before
    assert new and all(name.startswith("classify-") for name in new)
    assert len(new) == 3
    generated = [p for p in (tmp_path / "run" / "cache").glob("eval-*")]
    assert len(generated) == 3  # no new generation folders


@pytest.mark.parametrize("text, message", [
    ("Ks: [2, 9]\nbogus: 1\n", "bogus: unknown key"),
    ("Ks: [2, 9]\ntrain: {iterations: many}\n", "train.iterations: expected int"),
    ("Ks: [2, 9]\nsample: {n_eval: 0}\n", "sample.n_eval: must be at least 1"),
    ("Ks: [2, 70000]\n", "Ks: [70000] not below the 60000 samples"),
    ("Ks: [2]\nmodel: {kind: magic}\n", "model.kind: 'magic' is not one of"),
    ("Ks: two\n", "Ks: expected tuple"),
    ("Ks: [2]\ndata: {name: mnist, root: /nonexistent}\n", "mnist"),
    ("Ks: [2\n", "not valid YAML"),
    ("Ks: [2]\ndevice: cuda\nexecutor: {kind: ray}\n", "executor.gpus_per_task"),
    ("Ks: [2]\nanalysis: {per_label: 0}\n", "analysis.per_label: must be at least 1"),
])
def test_malformed_configs_fail_before_any_work(tmp_path, text, message):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    result = CliRunner().invoke(cli, ["sweep", str(config), "--out", str(tmp_path / "run")])
    assert result.exit_code != 0
    assert message in result.output, result.output
    assert not (tmp_path / "run").exists()


def test_set_overrides_and_dry_run(tmp_path):
    config = load_config(TINY, ["train.iterations=7", "Ks=[2, 4]"])
    assert config.train.iterations == 7 and config.Ks == (2, 4)
    with pytest.raises(ValueError, match="expects key=value"):
        load_config(TINY, ["train.iterations"])
    result = CliRunner().invoke(cli, ["sweep", str(TINY), "--out", str(tmp_path / "r"),
                                      "--dry-run"])
    assert result.exit_code == 0 and "K=2: train — (the exact denoiser" in result.output


# The tiny sweep with a trained network (toy MLP, a few dozen steps) instead of the exact model.
NETWORK = ["--set", "model.kind=network", "--set", "model.preset=toy-mlp",
           "--set", "train.iterations=40", "--set", "train.batch_size=32",
           "--set", "train.lr=0.002", "--set", "train.ema_decay=0.999",  # the toy's, as before
           "--set", "sample.n_eval=100", "--set", "sample.min_synth=100",
           "--set", "sample.steps=50", "--set", "measure.bootstrap=100"]


def test_process_pool_and_ray_executors_match_the_sequential_run(tmp_path):
    pytest.importorskip("ray")
    _run(tmp_path / "here", *NETWORK)
    assert len(list((tmp_path / "here" / "cache").glob("train-*"))) == 3
    _run(tmp_path / "pool", *NETWORK, "--workers", "2")
    _run(tmp_path / "ray", *NETWORK, "--executor", "ray", "--workers", "2")
    expected = (tmp_path / "here" / "fractions.csv").read_text()
    assert (tmp_path / "pool" / "fractions.csv").read_text() == expected
    assert (tmp_path / "ray" / "fractions.csv").read_text() == expected
    assert (tmp_path / "ray" / "report.html").exists()


def test_ray_executor_without_ray_is_refused_before_any_work(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "ray" else real(name, *a))
    result = CliRunner().invoke(cli, ["sweep", str(TINY), "--out", str(tmp_path / "run"),
                                      "--executor", "ray"])
    assert result.exit_code != 0
    assert "executor.kind: ray needs the ray package" in result.output
    assert not (tmp_path / "run").exists()


def test_analysis_adds_basins_and_curvature_per_label(tmp_path):
    result = _run(tmp_path / "run", "--set", "analysis.basins=true", "--set",
                  "analysis.curvature=true", "--set", "analysis.per_label=3",
                  "--set", "analysis.n_trials=4", "--set", "analysis.sigma_hi=1.0")
    run = tmp_path / "run"
    assert (run / "critical.png").exists() and (run / "curvature.png").exists()
    folders = sorted((run / "cache").glob("analysis-*"))
    assert len(folders) == 3, result.output
    import json

    import numpy as np

    k2 = [f for f in folders if json.loads((f / "DONE.json").read_text())["K"] == 2]
    with np.load(k2[0] / "analysis.npz") as d:
        labels, sigma, eig = d["label"], d["sigma"], d["eigenvalues"]
    assert len(labels) <= 9 and sigma.shape == labels.shape and eig.shape == (len(labels), 2)
    # the exact model at K = 2 retrieves: its memorized samples sit in basins ≥ σ_lo, most
    # of them (a sample whose trials at σ_lo reach the other pattern too has σ* = 0)
    assert (labels == 0).sum() >= 2 and np.median(sigma[labels == 0]) >= 0.2
    assert "analysis s" in (run / "report.html").read_text()


def test_trained_2d_landscape_in_the_report(tmp_path):
    import numpy as np

    _run(tmp_path / "run", *NETWORK, "--set", "analysis.landscape=true",
         "--set", "analysis.landscape_Ks=[2, 64]", "--set", "analysis.landscape_resolution=12")
    run = tmp_path / "run"
    assert (run / "learned_landscape.png").exists()
    rows = np.loadtxt(run / "learned_attractors.csv", delimiter=",", skiprows=1, ndmin=2)
    assert set(rows[:, 0].astype(int)) == {2, 64}
    # every evaluated sample of K = 2 (100 of them) lies in some learned attractor
    assert rows[rows[:, 0] == 2, 3].sum() == 100
    with np.load(next((run / "cache").glob("landscape-*")) / "landscape.npz") as d:
        assert d["learned"].shape == d["exact"].shape == (12, 12)
        assert np.isfinite(d["learned"]).all()


def test_lpips_sweep_without_weights_fails_before_any_work(tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("MEMGEN_LPIPS_WEIGHTS", str(tmp_path))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    result = CliRunner().invoke(cli, ["sweep", str(TINY), "--out", str(tmp_path / "run"),
                                      "--set", "measure.metric=lpips-alex"])
    assert result.exit_code != 0
    assert "measure.metric: LPIPS-alex needs alexnet-owt-7be5be79.pth" in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_every_shipped_config_is_valid(path):
    config = load_config(path)
    assert config.Ks == tuple(sorted(config.Ks)) and config.name
