"""Issue 23, generate's part: a set has an identity (a resumed shard is reused only when made
by the same model and settings), eval and synth get different default seeds, options are
checked before --out exists, and non-finite models or foreign files are user errors."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from model_fixtures import scripted_eps
from test_cli import assert_fails, ok, run, save

from memgen.diffusion.denoisers import EmpiricalDenoiser
from memgen.diffusion.generate import GenerateConfig, generate, name_seed
from memgen.diffusion.schedules import VPSchedule, VESchedule
from memgen.diffusion.training import TrainConfig, train
from memgen.errors import UserError


def _images(n=5, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, 1, 8, 8)).astype(np.float32)


@pytest.fixture
def train_file(tmp_path):
    return save(tmp_path / "train.npz", _images())


def _checkpoint(folder: Path, seed: int) -> Path:
    """A tiny trained VE MLP (2 iterations): its checkpoint.pt."""
    config = TrainConfig(preset="toy-mlp", iterations=2, batch_size=4, seed=seed, log_every=1)
    data = torch.from_numpy(np.random.default_rng(1).normal(size=(4, 2)).astype(np.float32))
    train(config, data, folder, progress=False)
    return folder / "checkpoint.pt"


def _samples(folder: Path, name="samples") -> np.ndarray:
    with np.load(folder / f"{name}.npz", allow_pickle=False) as archive:
        return archive["samples"]


def _record(folder: Path, name="samples") -> dict:
    return json.loads((folder / f"{name}.json").read_text())


def _consistent(folder: Path, name="samples") -> dict:
    """NAME.json describes NAME.npz: the shards it lists (each made with its identity) hold
    exactly the merged rows. Returns the identity."""
    record = _record(folder, name)
    parts = []
    for shard in record["shards"]:
        shard_record = json.loads((folder / shard).with_suffix(".json").read_text())
        assert shard_record["identity"] == record["identity"], shard
        with np.load(folder / shard, allow_pickle=False) as archive:
            parts.append(archive["samples"])
    np.testing.assert_array_equal(np.concatenate(parts), _samples(folder, name))
    return record["identity"]


def _error_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


# ------------------------------------------------------------------ 1. identity of a set


def test_new_seed_sampler_and_steps_refuse_then_overwrite_regenerates(tmp_path, train_file):
    """The issue's case: same --out, --seed 2 --sampler ddim --steps 50 after --seed 1
    --steps 10 used to hand back the first run's samples under the new samples.json."""
    out, fresh = tmp_path / "G", tmp_path / "fresh"
    base = ["generate", "--exact", train_file, "--n", 8, "--shard-size", 4]
    ok(run(*base, "--steps", 10, "--seed", 1, "--out", out))
    first = _samples(out)
    assert _consistent(out)["seed"] == 1
    new = ["--seed", 2, "--sampler", "ddim", "--steps", 50]
    line = _error_line(run(*base, *new, "--out", out))
    for word in ("seed (1, now 2)", "sampler (ddpm, now ddim)", "steps (10, now 50)",
                 "--overwrite"):
        assert word in line, line
    np.testing.assert_array_equal(_samples(out), first)  # untouched, and still described
    assert _consistent(out)["sampler"] == "ddpm"
    ok(run(*base, *new, "--out", out, "--overwrite"))
    ok(run(*base, *new, "--out", fresh))
    identity = _consistent(out)
    assert (identity["seed"], identity["sampler"], identity["steps"]) == (2, "ddim", 50)
    np.testing.assert_array_equal(_samples(out), _samples(fresh))
    assert not np.array_equal(_samples(out), first)


def test_a_retrained_checkpoint_in_place_is_another_model(tmp_path):
    ckpt = _checkpoint(tmp_path / "run", seed=0)
    out = tmp_path / "G"
    args = ["generate", "--checkpoint", ckpt, "--n", 6, "--steps", 20, "--seed", 3,
            "--shard-size", 3, "--out", out]
    ok(run(*args))
    identity = _consistent(out)
    assert identity["model"] == {"kind": "checkpoint",
                                 "sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest()}
    first = _samples(out)
    shutil.copy(_checkpoint(tmp_path / "other", seed=1), ckpt)  # retrained: same path
    line = _error_line(run(*args))
    assert "model (checkpoint sha256" in line and "--overwrite" in line, line
    np.testing.assert_array_equal(_samples(out), first)
    assert _consistent(out) == identity
    ok(run(*args, "--overwrite"))
    assert _consistent(out)["model"]["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert not np.array_equal(_samples(out), first)


def test_another_models_shards_with_the_same_rows_are_refused(tmp_path, train_file):
    other = save(tmp_path / "other.npz", _images(seed=1))
    a, b = tmp_path / "A", tmp_path / "B"
    base = ["--n", 8, "--steps", 10, "--seed", 1, "--shard-size", 4]
    ok(run("generate", "--exact", other, *base, "--out", a))
    ok(run("generate", "--exact", train_file, *base, "--out", b))
    theirs, ours = _samples(a), _samples(b)
    for shard in ("samples-00000", "samples-00001"):  # A's shards, with records, into B
        for suffix in (".npz", ".json"):
            shutil.copy(a / f"{shard}{suffix}", b / f"{shard}{suffix}")
    line = _error_line(run("generate", "--exact", train_file, *base, "--out", b))
    assert "samples-00000.npz was made with another model (exact sha256" in line, line
    np.testing.assert_array_equal(_samples(b), ours)
    # and shards without any record (an earlier memgen, or copied bare) are not reused either
    for suffix in (".npz", ".json"):
        for shard in ("samples-00000", "samples-00001"):
            (b / f"{shard}{suffix}").unlink()
    shutil.copy(a / "samples-00001.npz", b / "samples-00001.npz")
    line = _error_line(run("generate", "--exact", train_file, *base, "--out", b))
    assert "samples-00001.npz has no record of what made it" in line, line
    ok(run("generate", "--exact", train_file, *base, "--out", b, "--overwrite"))
    np.testing.assert_array_equal(_samples(b), ours)
    assert not np.array_equal(_samples(b)[4:], theirs[4:])
    _consistent(b)


def test_another_training_set_or_prior_data_is_another_identity(tmp_path, train_file):
    out = tmp_path / "G"
    changed = _images()
    changed[0, 0, 0, 0] = 0.5  # one value
    moved = save(tmp_path / "moved.npz", changed)
    base = ["--n", 4, "--steps", 10, "--seed", 0, "--out", out]
    ok(run("generate", "--exact", train_file, *base))
    assert "model (exact sha256" in _error_line(run("generate", "--exact", moved, *base))
    prior = ["--prior", "forward", "--prior-data"]
    ok(run("generate", "--exact", train_file, *base, *prior, train_file, "--overwrite"))
    line = _error_line(run("generate", "--exact", train_file, *base, *prior, moved))
    assert "prior_data_sha256" in line, line
    assert _consistent(out)["prior"] == "forward"


def test_resume_reuses_shards_of_the_same_identity_whatever_the_batch(tmp_path):
    den = EmpiricalDenoiser(torch.from_numpy(_images()))
    config = GenerateConfig(n=8, steps=10, seed=4, batch_size=8, shard_size=4)
    generate(den, (1, 8, 8), VPSchedule(), config, tmp_path, progress=False)
    marked = np.full((4, 1, 8, 8), 0.5, dtype=np.float32)
    np.savez(tmp_path / "samples-00001.npz", samples=marked)  # a reused shard shows itself
    smaller = GenerateConfig(n=8, steps=10, seed=4, batch_size=3, shard_size=4)
    merged = generate(den, (1, 8, 8), VPSchedule(), smaller, tmp_path, progress=False)
    np.testing.assert_array_equal(np.load(merged)["samples"][4:], marked)
    # a denoiser of other patterns (no source given: its fingerprint) is another model
    other = EmpiricalDenoiser(torch.from_numpy(_images(seed=2)))
    with pytest.raises(UserError, match="another model"):
        generate(other, (1, 8, 8), VPSchedule(), config, tmp_path, progress=False)
    with pytest.raises(UserError, match=r"clip \(True, now False\)"):
        generate(den, (1, 8, 8), VPSchedule(),
                 GenerateConfig(n=8, steps=10, seed=4, shard_size=4, clip=False), tmp_path,
                 progress=False)


def test_shards_beyond_n_are_not_left_to_mix(tmp_path, train_file):
    out = tmp_path / "G"
    base = ["generate", "--exact", train_file, "--steps", 10, "--seed", 0, "--shard-size", 4]
    ok(run(*base, "--n", 8, "--out", out))
    line = _error_line(run(*base, "--n", 4, "--out", out))
    assert "samples-00001.npz holds samples 4..7, beyond --n 4" in line, line
    assert len(_samples(out)) == 8 and _consistent(out)


def test_the_sweep_keeps_drawing_the_same_samples(tmp_path):
    """generate() without a source (the sweep's call) writes the bits it always wrote:
    sample i from stream (seed, i), the same as a set drawn whole in one batch."""
    den = EmpiricalDenoiser(torch.from_numpy(_images()))
    config = GenerateConfig(n=6, sampler="ddim", steps=10, eta=0.5, seed=7, batch_size=2,
                            shard_size=4)
    merged = generate(den, (1, 8, 8), VPSchedule(), config, tmp_path / "a", progress=False)
    whole = GenerateConfig(n=6, sampler="ddim", steps=10, eta=0.5, seed=7, batch_size=6,
                           shard_size=6)
    again = generate(den, (1, 8, 8), VPSchedule(), whole, tmp_path / "b", progress=False)
    np.testing.assert_array_equal(np.load(merged)["samples"], np.load(again)["samples"])
    assert GenerateConfig(n=1).seed == 0  # library callers keep their seed


# ------------------------------------------------------------------ 2. independent sets


def test_eval_and_synth_draw_different_noise_by_default(tmp_path):
    """With ε̂ = 0 a sample is its own starting noise, scaled: equal rows mean equal noise."""
    zero = _scripted(tmp_path / "zero.pt", _Zero())
    out = tmp_path / "G"
    base = ["generate", "--torchscript", zero, "--shape", 1, 4, 4, "--n", 6, "--steps", 5,
            "--out", out]
    for name in ("eval", "synth"):
        result = ok(run(*base, "--name", name))
        assert f"(seed {name_seed(name)}, from --name {name})" in result.output
    want = {name: int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")
            for name in ("eval", "synth")}
    for name, seed in want.items():
        assert _consistent(out, name)["seed"] == seed == name_seed(name)
    assert want["eval"] != want["synth"]
    evals, synths = (_samples(out, name).reshape(6, -1) for name in ("eval", "synth"))
    assert np.unique(evals, axis=0).shape[0] == 6
    assert not (evals[:, None] == synths[None]).all(-1).any()  # no row shared
    given = tmp_path / "given"
    for name in ("eval", "synth"):
        ok(run(*base[:-1], given, "--name", name, "--seed", 5))
    np.testing.assert_array_equal(_samples(given, "eval"), _samples(given, "synth"))
    assert "derived from --name" in run("generate", "--help").output


# ------------------------------------------------------- 3. refused before --out exists


REFUSED = [
    (["--steps", 0], "--steps must be at least 1"),
    (["--steps", -1], "--steps must be at least 1"),
    (["--steps", 5000], "T = 1000"),
    (["--sampler", "ddim", "--eta", -1], "--eta must lie in [0, 1]"),
    (["--sampler", "ddim", "--eta", 5], "--eta must lie in [0, 1]"),
    (["--eta", 0.5], "the ddpm sampler has none"),
    (["--sampler", "heun", "--eta", 0], "the heun sampler has none"),
    (["--sampler", "euler_maruyama", "--eta", 1], "the euler_maruyama sampler has none"),
    (["--shape", 1, 8, 8], "--shape is for --torchscript and --diffusers"),
    (["--prior-data", "TRAIN"], "--prior-data is the training set of --prior forward"),
    (["--prior", "forward", "--prior-data", "SMALL"], "--prior-data holds samples of shape"),
    (["--clip-range", -0.5, 0.5], "--clip-range has no effect"),
    (["--clip-denoised", "--clip-range", 0.5, 0.5], "clip_range must be a pair"),
    (["--n", 10**12], "would write about"),
    (["--n", 0], "at least 1"),
    (["--schedule", "ve", "--steps", 1], "at least 2 steps"),
]


@pytest.mark.parametrize("extra, phrase", REFUSED, ids=[" ".join(map(str, e)) for e, _ in REFUSED])
def test_bad_options_are_refused_before_the_folder_exists(tmp_path, train_file, extra, phrase):
    small = save(tmp_path / "small.npz", np.zeros((3, 1, 4, 4), np.float32))
    extra = [{"TRAIN": train_file, "SMALL": small}.get(a, a) for a in extra]
    out = tmp_path / "deep" / "G"
    assert_fails(run("generate", "--exact", train_file, "--n", 4, *extra, "--out", out),
                 phrase, out, tmp_path)
    assert not (tmp_path / "deep").exists()


def test_schedule_is_refused_where_the_model_brings_its_own(tmp_path):
    ckpt = _checkpoint(tmp_path / "run", seed=0)
    eps = scripted_eps(tmp_path / "eps.pt", torch.zeros(1, 4, 4))
    out = tmp_path / "G"
    for source in (["--checkpoint", ckpt], ["--torchscript", eps, "--shape", 1, 4, 4]):
        for schedule in ("ve", "vp"):
            assert_fails(run("generate", *source, "--schedule", schedule, "--n", 2,
                             "--out", out), "--schedule is for --exact", out, tmp_path)
    assert_fails(run("generate", "--checkpoint", ckpt, "--n", 2, "--shape", 1, 4, 4,
                     "--out", out), "--shape is for", out, tmp_path)


def test_the_disk_estimate_counts_shards_merged_and_reference(tmp_path, train_file,
                                                              monkeypatch):
    import memgen.cli.models as models

    free = 2 * 8 * 64 * 4  # exactly the shards and merged file of 8 samples of 1×8×8
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(models.shutil, "disk_usage",
                        lambda path: usage._replace(free=free))
    out = tmp_path / "G"
    base = ["generate", "--exact", train_file, "--steps", 5, "--out", out]
    assert_fails(run(*base, "--n", 9), "4.61 KB", out, tmp_path)
    assert_fails(run(*base, "--n", 8, "--reference-layout", 2), "reference copy", out, tmp_path)
    ok(run(*base, "--n", 8))


def test_clip_range_is_taken_where_x0_is_clipped(tmp_path, train_file):
    out = tmp_path / "G"
    ok(run("generate", "--exact", train_file, "--n", 4, "--steps", 10, "--clip-denoised",
           "--clip-range", -0.5, 0.5, "--out", out))
    assert _consistent(out)["clip_range"] == [-0.5, 0.5]
    assert np.abs(_samples(out)).max() <= 0.5
    assert_fails(run("generate", "--exact", train_file, "--n", 4, "--no-clip-denoised",
                     "--clip-range", -0.5, 0.5, "--out", tmp_path / "H"),
                 "not clipped with --no-clip-denoised", tmp_path / "H", tmp_path)


# ------------------------------------------------------------------ 4. non-finite models


class _Zero(torch.nn.Module):
    def forward(self, x, t):
        return x * 0.0


class _NaN(torch.nn.Module):
    def forward(self, x, t):
        return x * float("nan")


class _Inf(torch.nn.Module):
    def forward(self, x, t):
        return x * 0.0 + float("inf")


class _ThreeChannels(torch.nn.Module):
    def forward(self, x, t):
        return torch.cat([x, x, x], 1)


class _Cropped(torch.nn.Module):
    def forward(self, x, t):
        return x[:, :, :2]


class _TakesThree(torch.nn.Module):
    def forward(self, x, t):
        return torch.nn.functional.conv2d(x, torch.zeros(3, 3, 1, 1))


def _scripted(path: Path, module: torch.nn.Module) -> Path:
    torch.jit.script(module).save(str(path))
    return path


def test_a_model_returning_nan_is_a_user_error_and_writes_no_set(tmp_path):
    nan = _scripted(tmp_path / "nan.pt", _NaN())
    out = tmp_path / "G"
    line = _error_line(run("-q", "generate", "--torchscript", nan, "--shape", 1, 4, 4, "--n", 8,
                           "--steps", 5, "--batch-size", 4, "--shard-size", 4, "--out", out))
    assert f"torchscript {nan} gave NaN or Inf samples" in line, line
    assert "samples 0..3" in line, line
    assert not out.exists()  # no shard, no merged set: the folder it made is gone
    inf = _scripted(tmp_path / "inf.pt", _Inf())
    line = _error_line(run("-q", "generate", "--torchscript", inf, "--shape", 1, 4, 4, "--n", 4,
                           "--steps", 5, "--no-clip-denoised", "--out", tmp_path / "H"))
    assert "gave NaN or Inf" in line  # the final clip to [-1, 1] would have hidden it


class _Breaks:
    """The exact denoiser until ``calls`` calls, NaN after: finite early batches."""

    def __init__(self, patterns, calls):
        self.exact, self.left = EmpiricalDenoiser(patterns), calls

    def __call__(self, x, sigma):
        self.left -= 1
        out = self.exact(x, sigma)
        return out if self.left >= 0 else out * float("nan")


def test_finished_finite_shards_stay_and_no_nan_shard_is_written(tmp_path):
    config = GenerateConfig(n=8, steps=5, seed=1, batch_size=4, shard_size=4, name="s")
    den = _Breaks(torch.from_numpy(_images()), calls=5)  # one batch: 5 steps, 5 calls
    with pytest.raises(UserError, match=r"samples 4\.\.7 of 's'"):
        generate(den, (1, 8, 8), VPSchedule(), config, tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s-00000.json", "s-00000.npz"]
    assert np.isfinite(np.load(tmp_path / "s-00000.npz")["samples"]).all()


# ------------------------------------------------------- 5. user errors, not bugs (exit 70)


def test_a_bare_state_dict_as_checkpoint_is_a_user_error(tmp_path):
    bare = tmp_path / "weights.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), bare)
    out = tmp_path / "G"
    assert_fails(run("generate", "--checkpoint", bare, "--n", 2, "--out", out),
                 "is not a memgen train checkpoint", out, tmp_path)
    torch.save({"config": "{}", "model": {}, "ema": {"w": torch.zeros(1)}}, bare)
    assert_fails(run("generate", "--checkpoint", bare, "--n", 2, "--out", out),
                 "do not fit its network", out, tmp_path)


@pytest.mark.parametrize("module, phrase", [
    (_ThreeChannels, "returns (1, 3, 4, 4) for an input of shape (1, 1, 4, 4)"),
    (_Cropped, "returns (1, 1, 2, 4)"),
    (_TakesThree, "fails on an input of shape (1, 1, 4, 4) (--shape 1 4 4)"),
])
def test_a_torchscript_model_of_another_shape_is_a_user_error(tmp_path, module, phrase):
    path = _scripted(tmp_path / "m.pt", module())
    out = tmp_path / "G"
    assert_fails(run("generate", "--torchscript", path, "--shape", 1, 4, 4, "--n", 2,
                     "--out", out), phrase, out, tmp_path)


def test_ve_schedule_ladder_checks(tmp_path, train_file):
    """--exact with --schedule ve: any steps ≥ 2, recorded in the identity."""
    out = tmp_path / "G"
    ok(run("generate", "--exact", train_file, "--schedule", "ve", "--n", 2, "--steps", 5,
           "--out", out))
    assert _consistent(out)["schedule"] == {"type": "VESchedule", **asdict(VESchedule())}


def test_exact_training_sets_in_another_range_are_refused_or_converted(tmp_path):
    """--exact in [0, 255] floats is refused as the input contract says; with --input-range
    0,255 it is converted, and the exact denoiser then draws the [-1, 1] set's samples."""
    images = _images()
    save(tmp_path / "minus1.npz", images)
    save(tmp_path / "u255.npz", (images + 1) * 127.5)
    common = ["--n", "3", "--steps", "20", "--seed", "1", "--sampler", "ddim"]
    result = run("generate", "--exact", tmp_path / "u255.npz", *common, "--out", tmp_path / "r")
    assert_fails(result, "--input-range", tmp_path / "r", tmp_path)
    ok(run("generate", "--exact", tmp_path / "u255.npz", "--input-range", "0,255", *common,
           "--out", tmp_path / "c"))
    ok(run("generate", "--exact", tmp_path / "minus1.npz", *common, "--out", tmp_path / "m"))
    np.testing.assert_allclose(_samples(tmp_path / "c"), _samples(tmp_path / "m"), atol=1e-5)
    result = run("generate", "--checkpoint", tmp_path / "none.pt", "--input-range", "0,1",
                 "--n", "2", "--out", tmp_path / "x")
    assert_fails(result, "--input-range", tmp_path / "x", tmp_path)
