"""Issue #25, a new user's odd inputs: each bad input refused before any work, and no
silently wrong number."""

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from memgen.cli.main import cli


def _sets(tmp_path, train):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "train.npz", samples=train.astype(np.float32))
    np.savez(tmp_path / "held.npz", samples=rng.uniform(-1, 1, (10, 1, 4, 4)).astype(np.float32))
    return str(tmp_path / "train.npz"), str(tmp_path / "held.npz")


@pytest.mark.parametrize("case", ["fraction", "copies"])
def test_census_refuses_a_radius_it_cannot_set_before_sampling(tmp_path, case):
    """A non-positive --radius-fraction, or held-out images that are the training images,
    is refused before any endpoint is drawn: --out is not created."""
    train, held = _sets(tmp_path, np.random.default_rng(1).uniform(-1, 1, (4, 1, 4, 4)))
    fraction, heldout = ("0", held) if case == "fraction" else ("0.5", train)
    out = tmp_path / "census"
    result = CliRunner().invoke(cli, ["census", "--exact", train, "--n", "4", "--steps", "5",
                                      "--heldout", heldout, "--radius-fraction", fraction,
                                      "--out", str(out), "-q"])
    assert result.exit_code == 1, result.output
    assert "radius" in result.output and not out.exists()


def test_r2_against_a_constant_reference_is_undefined_not_minus_infinity():
    """A reference whose outputs do not vary (one training image): r² = 1 − err / 0 is
    NaN, except 1 where the model matches it exactly; a varying reference is unchanged."""
    from memgen.probes.r2 import r2_scores
    b = torch.ones(5, 3) * torch.tensor([0.5, -0.2, 0.1])  # every output the same image
    assert r2_scores(b.clone(), b) == (1.0, 1.0)
    pooled, median = r2_scores(b + 0.1, b)
    assert np.isnan(pooled) and median == pytest.approx(1 - 0.03 / (0.74 / 3), rel=1e-6)
    v = torch.arange(6.0).reshape(3, 2)  # a = 0.5 b: 1 − 0.25 Σ‖b‖² / Σ‖b − b̄‖²
    assert r2_scores(0.5 * v, v)[0] == pytest.approx(1 - 0.25 * 55 / 16)


def test_cli_r2_of_the_exact_denoiser_of_one_image_against_itself_is_one(tmp_path):
    train, held = _sets(tmp_path, np.random.default_rng(1).uniform(-1, 1, (1, 1, 4, 4)))
    result = CliRunner().invoke(cli, ["r2", "--exact", train, "--train", train, "--heldout",
                                      held, "--sigma", "0.1"])
    assert result.exit_code == 0, result.output
    exact = next(line for line in result.output.splitlines() if " exact " in line)
    assert exact.split()[2:4] == ["1.0000", "1.0000"] and "inf" not in result.output


def test_a_base_config_of_one_training_free_kind_turns_into_another_with_null():
    """configs/spurious-cpu.yaml sets model.smoothing; --set model.kind=gaussian alone is
    refused (the key would have no effect) and model.smoothing=null unsets it."""
    from memgen.errors import UserError
    from memgen.experiments.config import load_config
    with pytest.raises(UserError, match=r"model.smoothing: has no effect .*=null\)"):
        load_config("configs/spurious-cpu.yaml", ["model.kind=gaussian"])
    config = load_config("configs/spurious-cpu.yaml", ["model.kind=els", "model.smoothing=null",
                                                       "model.patch=5"])
    assert (config.model.kind, config.model.patch, config.model.smoothing) == ("els", 5, 0.1)
    again = load_config("configs/spurious-cpu.yaml", ["model.smoothing=null"])
    assert again.model.smoothing == 0.1  # unset: the default s


@pytest.mark.parametrize("option", [["--patch", "4"], ["--smoothing", "-1"]])
def test_r2_refuses_a_bad_reference_parameter_the_user_gave(tmp_path, option):
    """A --patch or --smoothing of one's own that the reference refuses is an error (it
    was skipped with exit status 0, the row silently missing)."""
    train, held = _sets(tmp_path, np.random.default_rng(1).uniform(-1, 1, (3, 1, 4, 4)))
    result = CliRunner().invoke(cli, ["r2", "--exact", train, "--train", train, "--heldout",
                                      held, "--sigma", "0.1", *option])
    assert result.exit_code == 1 and option[0] in result.output
    assert "skipped" not in result.output and "sigma" not in result.output


@pytest.mark.parametrize("command", ["r2", "census"])
def test_a_repeated_sigma_or_radius_fraction_is_refused(tmp_path, command):
    """memgen r2 --sigma 0.1 0.1 printed two different r² for one σ (a fresh noise draw
    each); census --radius-fraction 0.2 0.2 two rows (the sweep refuses it already)."""
    train, held = _sets(tmp_path, np.random.default_rng(1).uniform(-1, 1, (3, 1, 4, 4)))
    args = (["r2", "--train", train, "--sigma", "0.1", "0.1"] if command == "r2" else
            ["census", "--n", "4", "--steps", "5", "--radius-fraction", "0.2", "0.2",
             "--out", str(tmp_path / "census")])
    result = CliRunner().invoke(cli, [*args, "--exact", train, "--heldout", held])
    assert result.exit_code == 1 and "only once" in result.output, result.output
    assert not (tmp_path / "census").exists()


@pytest.mark.parametrize("command", ["generate", "census"])
def test_schedule_help_names_the_training_free_sources_that_read_it(command):
    """--schedule acts on --smoothed/--els/--gaussian too (the help said --exact only)."""
    ctx = click.Context(cli)
    option = next(p for p in cli.get_command(ctx, command).params if p.name == "schedule")
    assert all(flag in option.help for flag in ("--exact", "--smoothed", "--els", "--gaussian"))


@pytest.mark.parametrize("args", [["--smoothed", "TRAIN", "--smoothing", "inf"],
                                  ["--exact", "TRAIN", "--sigma", "inf"]])
def test_r2_refuses_an_infinite_smoothing_or_sigma(tmp_path, args):
    """Both made every output NaN: a table of nan, exit status 0."""
    train, held = _sets(tmp_path, np.random.default_rng(1).uniform(-1, 1, (3, 1, 4, 4)))
    args = [train if a == "TRAIN" else a for a in args]
    sigma = [] if "--sigma" in args else ["--sigma", "0.1"]
    result = CliRunner().invoke(cli, ["r2", *args, *sigma, "--train", train, "--heldout", held])
    assert result.exit_code == 1 and "finite" in result.output, result.output


def test_sweep_refuses_an_infinite_smoothing():
    from memgen.errors import UserError
    from memgen.experiments.config import load_config
    with pytest.raises(UserError, match="model.smoothing: must be finite"):
        load_config("configs/spurious-cpu.yaml", ["model.smoothing=.inf"])


def test_r2_will_not_write_its_table_over_an_input(tmp_path):
    """--out T.npz --overwrite replaced the training set with the CSV."""
    train, held = _sets(tmp_path, np.random.default_rng(1).uniform(-1, 1, (3, 1, 4, 4)))
    before = (tmp_path / "train.npz").read_bytes()
    result = CliRunner().invoke(cli, ["r2", "--exact", train, "--train", train, "--heldout",
                                      held, "--sigma", "0.1", "--out", train, "--overwrite"])
    assert result.exit_code == 1 and "one of the inputs" in result.output
    assert (tmp_path / "train.npz").read_bytes() == before


@pytest.mark.parametrize("size", ["0", "-2"])
def test_r2_refuses_a_batch_size_below_one(tmp_path, size):
    """It was an internal error (range() step 0; torch.cat of nothing)."""
    train, held = _sets(tmp_path, np.random.default_rng(1).uniform(-1, 1, (3, 1, 4, 4)))
    result = CliRunner().invoke(cli, ["r2", "--exact", train, "--train", train, "--heldout",
                                      held, "--sigma", "0.1", "--batch-size", size])
    assert result.exit_code == 2 and "--batch-size" in result.output, result.output


def test_r2_refuses_a_single_heldout_image(tmp_path):
    """One image: the pooled r² has no spread to divide by (--n refuses 1 already)."""
    train, _ = _sets(tmp_path, np.random.default_rng(1).uniform(-1, 1, (3, 1, 4, 4)))
    np.savez(tmp_path / "one.npz", samples=np.zeros((1, 1, 4, 4), np.float32))
    result = CliRunner().invoke(cli, ["r2", "--exact", train, "--train", train, "--heldout",
                                      str(tmp_path / "one.npz"), "--sigma", "0.1"])
    assert result.exit_code == 1 and "at least 2 images" in result.output, result.output
