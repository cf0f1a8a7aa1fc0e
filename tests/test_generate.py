"""Generation: the exact denoiser memorizes (positive control), shards resume, batches
don't matter."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from model_fixtures import scripted_eps

from memgen.cli import cli
from memgen.diffusion.denoisers import EmpiricalDenoiser
from memgen.diffusion.generate import GenerateConfig, generate
from memgen.diffusion.loaders import load_denoiser
from memgen.diffusion.schedules import VPSchedule


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

    path = scripted_eps(tmp_path / "eps.pt", y)
    den = load_denoiser(torchscript=path, shape=(1, 4, 4)).denoiser
    sigma = float(schedule.sigma(500))
    out = den(torch.randn(3, 1, 4, 4), sigma)
    torch.testing.assert_close(out, y.expand(3, 1, 4, 4), rtol=1e-4, atol=1e-4)


def test_cli_generate_needs_one_source(tmp_path):
    result = CliRunner().invoke(cli, ["generate", "--n", "2", "--out", str(tmp_path / "x")])
    assert result.exit_code != 0 and "exactly one of" in result.output


def test_diffusers_loader_says_what_to_install(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_diffusers(name, *args, **kwargs):
        if name.startswith("diffusers"):
            raise ImportError("no diffusers")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_diffusers)
    with pytest.raises(ValueError, match="pip install diffusers"):
        load_denoiser(diffusers=tmp_path, shape=(3, 8, 8))


# ---------------------------------------------------------- defaults kept (regression)

# Samples made before clipping moved out of EpsDenoiser (it clipped x̂₀ itself): the default
# options must reproduce them exactly. ε̂ = 0.9 x_t + 0.2, VP schedule, 10 steps, seed 5.
STORED = {
    "ddim": [[-0.8862864971160889, -1.0, -0.5971070528030396, -0.230585977435112],
             [-0.22736555337905884, -1.0, -1.0, -0.022851580753922462],
             [0.7594670057296753, -0.699375331401825, 0.4604308605194092, -0.29322972893714905]],
    "ddpm": [[-0.711402952671051, -0.21102428436279297, -0.9912403225898743, -0.7730953693389893],
             [-0.7794874906539917, -0.9293391704559326, -0.8290064334869385, 0.0026771167758852243],
             [0.7175551652908325, -0.8644086122512817, -0.35452747344970703, -0.38784927129745483]],
    "heun": [[-0.9180563688278198, -1.0, -0.5721167325973511, -0.1387348175048828],
             [-0.13497048616409302, -1.0, -1.0, 0.10408063232898712],
             [0.9640527367591858, -0.6944353580474854, 0.6555883884429932, -0.21195749938488007]],
}


def _affine_eps(x, t):
    return 0.9 * x + 0.2 + 0.0 * t.view(-1, *([1] * (x.ndim - 1)))


def test_default_options_reproduce_the_stored_eps_samples(tmp_path):
    from memgen.diffusion.denoisers import EpsDenoiser

    for sampler, want in STORED.items():
        runs = {}
        for label, den, flag in (("default", EpsDenoiser(_affine_eps, VPSchedule()), None),
                                 ("old", EpsDenoiser(_affine_eps, VPSchedule(), clip=True), False),
                                 ("raw", EpsDenoiser(_affine_eps, VPSchedule()), False)):
            config = GenerateConfig(n=3, sampler=sampler, steps=10, seed=5, clip=False,
                                    clip_denoised=flag, name=f"{sampler}-{label}")
            runs[label] = np.load(generate(den, (1, 2, 2), VPSchedule(), config, tmp_path,
                                           progress=False))["samples"].reshape(3, -1)
        np.testing.assert_array_equal(runs["default"], np.array(want, dtype=np.float32))
        np.testing.assert_array_equal(runs["old"], runs["default"])
        assert not np.array_equal(runs["raw"], runs["default"])  # the clip did something
    record = json.loads((tmp_path / "heun-default.json").read_text())
    assert record["denoised_clip"] == [-1.0, 1.0] and record["config"]["prior"] == "standard"


def test_cli_generate_forward_prior_and_clip_options(tmp_path):
    train = tmp_path / "train.npz"
    np.savez(train, samples=_train(5))
    runner = CliRunner()
    help_text = runner.invoke(cli, ["generate", "--help"]).output
    for flag in ("--prior", "--prior-data", "--clip-denoised", "--clip-range"):
        assert flag in help_text
    result = runner.invoke(cli, ["generate", "--exact", str(train), "--n", "6", "--steps", "20",
                                 "--prior", "forward", "--clip-denoised", "--clip-range", "-0.5",
                                 "0.5", "--out", str(tmp_path / "gen")])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "gen" / "samples.json").read_text())
    assert record["config"]["prior"] == "forward" and record["denoised_clip"] == [-0.5, 0.5]
    samples = np.load(tmp_path / "gen" / "samples.npz")["samples"]
    assert np.abs(samples).max() <= 0.5
    from memgen.cli.models import _prior_data

    with pytest.raises(ValueError, match="--prior-data"):  # a TorchScript model: no train.npz
        _prior_data(None, None, None)
    (tmp_path / "run").mkdir()
    np.savez(tmp_path / "run" / "train.npz", samples=_train(2))  # where memgen train puts it
    assert _prior_data(None, None, str(tmp_path / "run" / "checkpoint.pt")) == \
        str(tmp_path / "run" / "train.npz")
