"""Generation: the exact denoiser memorizes (positive control), shards resume, batches don't matter."""

import json

import numpy as np
import torch
from click.testing import CliRunner

from memgen.cli import cli
from memgen.denoisers import EmpiricalDenoiser, load_torchscript_denoiser
from memgen.generate import GenerateConfig, generate
from memgen.schedules import VPSchedule


def _train(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (n, 1, 8, 8)).astype(np.float32)


def test_exact_denoiser_generates_training_points(tmp_path):
    train = _train()
    config = GenerateConfig(n=40, sampler="ddpm", steps=100, seed=3, batch_size=16, shard_size=16)
    merged = generate(EmpiricalDenoiser(torch.from_numpy(train)), (1, 8, 8), VPSchedule(),
                      config, tmp_path, progress=False)
    samples = np.load(merged, allow_pickle=False)["samples"]
    assert samples.shape == (40, 1, 8, 8)
    d = np.sqrt(((samples[:, None] - train[None]) ** 2).sum(axis=(2, 3, 4))).min(1)
    assert (d < 1e-3).mean() >= 0.99


def test_shards_resume_and_batches_do_not_matter(tmp_path):
    den = EmpiricalDenoiser(torch.from_numpy(_train()))
    one = GenerateConfig(n=10, sampler="ddim", steps=20, eta=1.0, seed=1, batch_size=10,
                         shard_size=4)
    first = np.load(generate(den, (1, 8, 8), VPSchedule(), one, tmp_path / "a",
                             progress=False))["samples"]
    small = GenerateConfig(n=10, sampler="ddim", steps=20, eta=1.0, seed=1, batch_size=3,
                           shard_size=4)
    second = np.load(generate(den, (1, 8, 8), VPSchedule(), small, tmp_path / "b",
                              progress=False))["samples"]
    np.testing.assert_array_equal(first, second)
    # A finished shard is not redone: mark one, delete another and the merged file, rerun.
    marked = np.full((4, 1, 8, 8), 7.0, dtype=np.float32)
    np.savez(tmp_path / "a" / "samples-00000.npz", samples=marked)
    (tmp_path / "a" / "samples-00001.npz").unlink()
    (tmp_path / "a" / "samples.npz").unlink()
    again = np.load(generate(den, (1, 8, 8), VPSchedule(), one, tmp_path / "a",
                             progress=False))["samples"]
    np.testing.assert_array_equal(again[:4], marked)
    np.testing.assert_array_equal(again[4:], first[4:])


def test_different_seeds_give_different_sets(tmp_path):
    den = EmpiricalDenoiser(torch.from_numpy(_train()))
    sets = [np.load(generate(den, (1, 8, 8), VPSchedule(),
                             GenerateConfig(n=8, steps=30, seed=s, name=f"s{s}"), tmp_path,
                             progress=False))["samples"] for s in (0, 1)]
    assert not np.array_equal(sets[0], sets[1])


def test_cli_generate_exact_then_classify_memorizes_everything(tmp_path):
    train = tmp_path / "train.npz"
    np.savez(train, samples=_train(5))
    runner = CliRunner()
    for name, seed in (("eval", 0), ("synth", 1)):
        result = runner.invoke(cli, ["generate", "--exact", str(train), "--n", "20", "--steps",
                                     "50", "--seed", str(seed), "--name", name,
                                     "--out", str(tmp_path / "gen")])
        assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["classify", "--train", str(train),
                                 "--eval", str(tmp_path / "gen" / "eval.npz"),
                                 "--synth", str(tmp_path / "gen" / "synth.npz"),
                                 "--out", str(tmp_path / "cls")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "cls" / "summary.json").read_text())
    assert summary["fractions"]["memorized"] == 1.0


def test_torchscript_eps_model_as_denoiser(tmp_path):
    """A scripted ε-model that returns the exact ε of one point y: D(x, σ) = y."""
    y = torch.full((1, 4, 4), 0.25)
    schedule = VPSchedule()

    class Eps(torch.nn.Module):
        def __init__(self, y, a_bar):
            super().__init__()
            self.register_buffer("y", y)
            self.register_buffer("a_bar", a_bar)

        def forward(self, x, t):
            a = self.a_bar[t.round().long()].view(-1, 1, 1, 1)
            return (x - a.sqrt() * self.y) / (1 - a).sqrt()

    path = tmp_path / "eps.pt"
    torch.jit.script(Eps(y, schedule.alphas_cumprod.float())).save(str(path))
    den = load_torchscript_denoiser(path)
    sigma = float(schedule.sigma(500))
    out = den(torch.randn(3, 1, 4, 4), sigma)
    torch.testing.assert_close(out, y.expand(3, 1, 4, 4), rtol=1e-4, atol=1e-4)


def test_cli_generate_needs_one_source(tmp_path):
    result = CliRunner().invoke(cli, ["generate", "--n", "2", "--out", str(tmp_path / "x")])
    assert result.exit_code != 0 and "exactly one of" in result.output


def test_diffusers_loader_says_what_to_install(tmp_path, monkeypatch):
    import builtins

    from memgen.denoisers import load_diffusers_denoiser

    real_import = builtins.__import__

    def no_diffusers(name, *args, **kwargs):
        if name.startswith("diffusers"):
            raise ImportError("no diffusers")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_diffusers)
    import pytest

    with pytest.raises(ValueError, match="memgen\\[diffusers\\]"):
        load_diffusers_denoiser(tmp_path)
