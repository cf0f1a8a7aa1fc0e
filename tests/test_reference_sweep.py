"""A sweep over the paper authors' checkpoints (``model.kind: checkpoints``): no training,
their training subsets (``data.split: reference``, checked against their own rule), their
sampler, and S_eval / S′ also written in their npz layout.

The checkpoints are the fixture network of tests/test_reference.py (its state dict as
``ema`` and ``model``, no ``args``: their YAML is given as model.reference_config), on
random 8×8 RGB data in [-1, 1] (the fixture's image size) in place of a data set.
"""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

import memgen.experiments.stages as stages_module
from memgen.cli import cli
from memgen.data import nested_indices
from memgen.experiments.config import load_config
from memgen.experiments.stages import split, train_key

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

DATA = Path(__file__).parent / "data"
MODEL = dict(image_size=8, in_channels=3, dim=32, dim_mults="1,1", attn_resolutions=4,
             num_res_blocks=1, dropout=0.1)
N_POOL = 40


@pytest.fixture(scope="module")
def state():
    with np.load(DATA / "reference_unet.npz", allow_pickle=False) as z:
        return {k[len("state/"):]: torch.from_numpy(z[k].astype(np.float32))
                for k in z.files if k.startswith("state/")}


@pytest.fixture
def pool(monkeypatch):
    """Random 8×8 RGB images in [-1, 1] as the data set every stage loads."""
    images = np.random.default_rng(0).uniform(-1, 1, (N_POOL, 3, 8, 8)).astype(np.float32)
    monkeypatch.setattr(stages_module, "load_dataset", lambda name, split, root: images)
    return images


def _folder(tmp_path, state, Ks=(2, 4)):
    """Their K.pt for each K (train_unet.py's payload less args) and their YAML."""
    folder = tmp_path / "ckpts"
    folder.mkdir()
    for K in Ks:
        torch.save({"model": state, "ema": state, "opt": {}, "iterations": 10 * K},
                   folder / f"{K}.pt")
    their = tmp_path / "their.yaml"
    their.write_text(yaml.safe_dump({"train": {"prediction_type": "epsilon",
                                               "beta_schedule": "linear", "timesteps": 1000},
                                     "model": MODEL}))
    return folder, their


def _config(tmp_path, folder, their, Ks=(2, 4)):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({
        "name": "reference checkpoints", "Ks": list(Ks), "data": {"name": "digits"},
        "model": {"kind": "checkpoints", "path": str(folder), "reference_config": str(their)},
        "sample": {"steps": 4, "n_eval": 12, "synth_multiplier": 4, "min_synth": 16},
        "measure": {"bootstrap": 50}}))
    return path


def _sweep(config, out):
    return CliRunner().invoke(cli, ["sweep", str(config), "--out", str(out)])


def _their_split_data(data, memorize_size, validate_size, seed):
    """Their train_utils.split_data, verbatim but for the docstring (train_unet.py calls it
    with validate_size = memorize_size = K and seed args.train.global_seed)."""
    max_size = len(data)
    generator = torch.Generator().manual_seed(seed)
    if memorize_size >= max_size:
        _, valid_data = torch.utils.data.random_split(
            data, [max_size - validate_size, validate_size], generator=generator)
        return data, valid_data
    elif validate_size >= max_size:
        train_data, _ = torch.utils.data.random_split(
            data, [memorize_size, max_size - memorize_size], generator=generator)
        return train_data, data
    train_data, valid_data, _ = torch.utils.data.random_split(
        data, [memorize_size, validate_size, max_size - (memorize_size + validate_size)],
        generator=generator)
    return train_data, valid_data


@pytest.mark.parametrize("n_total,K,seed", [(100, 2, 3407), (100, 17, 3407), (100, 50, 3407),
                                            (60000, 1000, 3407), (257, 9, 0)])
def test_reference_split_is_their_training_subset(n_total, K, seed):
    train_data, _ = _their_split_data(list(range(n_total)), K, K, seed)
    theirs = [train_data[i] for i in range(len(train_data))]
    assert nested_indices(n_total, K, seed, "reference").tolist() == theirs
    # nested as memgen's: S_K is a prefix of S_2K
    assert nested_indices(n_total, 2 * K, seed, "reference")[:K].tolist() == theirs


def test_checkpoints_sweep_end_to_end(tmp_path, state, pool):
    folder, their = _folder(tmp_path, state)
    config = _config(tmp_path, folder, their)
    result = _sweep(config, tmp_path / "run")
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    lines = (run / "fractions.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in lines[1:]] == ["2", "4"]
    assert (run / "report.html").exists()
    assert not list((run / "cache").glob("train-*"))  # nothing trained
    loaded = load_config(config)
    for K in (2, 4):
        train, _ = split(pool, K, loaded)
        np.testing.assert_array_equal(train, pool[nested_indices(N_POOL, K, 3407, "reference")])
        # their layout beside memgen's: the same samples, float32 (N, C, H, W) in [-1, 1]
        for which, n in (("eval", 12), ("synth", max(4 * K, 16))):
            path = run / "reference" / which / f"{K}.npz"
            with np.load(path, allow_pickle=False) as z:
                assert z.files == ["samples"]
                theirs = z["samples"]
            assert theirs.dtype == np.float32 and theirs.shape == (n, 3, 8, 8)
            assert theirs.min() >= -1 and theirs.max() <= 1
            ours = [np.load(p)["samples"] for p in run.glob(f"cache/{which}-*/{which}.npz")]
            assert any(np.array_equal(theirs, o) for o in ours)
    # a rerun is all cached; the checkpoint's content (not its name) is in the key
    again = CliRunner().invoke(cli, ["sweep", str(config), "--out", str(run), "--dry-run"])
    assert again.exit_code == 0 and "to run" not in again.output, again.output
    train, _ = split(pool, 2, loaded)
    before = train_key(train, loaded)
    moved = tmp_path / "moved"
    shutil.copytree(folder, moved)
    assert train_key(train, load_config(config, [f"model.path={moved}"])) == before
    torch.save({"ema": {k: 2 * v for k, v in state.items()}}, folder / "2.pt")
    assert train_key(train, loaded) != before


def test_missing_checkpoint_is_refused_before_any_work(tmp_path, state, pool):
    folder, their = _folder(tmp_path, state, Ks=(2, 4))
    result = _sweep(_config(tmp_path, folder, their, Ks=(2, 4, 8, 16)), tmp_path / "run")
    assert result.exit_code != 0
    assert "has no 8.pt, 16.pt" in result.output, result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("model,data,message", [
    ({"kind": "checkpoints"}, {}, "model.path: give the folder"),
    ({"kind": "checkpoints", "path": "."}, {"split": "memgen"}, "data.split = reference"),
    ({"kind": "exact", "path": "."}, {}, "only for model.kind = checkpoints"),
])
def test_checkpoints_config_checks(tmp_path, model, data, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"Ks": [2], "model": model, "data": {"name": "digits", **data}}))
    with pytest.raises(Exception, match=message):
        load_config(path)


def test_cli_generate_writes_their_layout(tmp_path, state):
    folder, their = _folder(tmp_path, state, Ks=(2,))
    out = tmp_path / "gen"
    result = CliRunner().invoke(cli, ["generate", "--reference-checkpoint", str(folder / "2.pt"),
                                      "--config", str(their), "--n", "3", "--steps", "3",
                                      "--reference-layout", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    with np.load(out / "reference" / "samples" / "2.npz", allow_pickle=False) as z:
        assert z.files == ["samples"]
        np.testing.assert_array_equal(z["samples"], np.load(out / "samples.npz")["samples"])
