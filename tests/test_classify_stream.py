"""memgen classify with a streamed synthetic set and with the faiss backend."""

import numpy as np
from click.testing import CliRunner

from memgen.cli import cli


def _classify(tmp_path, out, *extra):
    result = CliRunner().invoke(cli, ["classify", "--train", str(tmp_path / "train.npz"),
                                      "--eval", str(tmp_path / "eval.npz"),
                                      "--heldout", str(tmp_path / "heldout.npz"),
                                      "--out", str(tmp_path / out), *extra])
    assert result.exit_code == 0, result.output
    with np.load(tmp_path / out / "labels.npz") as d:
        return {key: d[key] for key in d.files}


def test_streamed_shards_and_faiss_give_the_in_memory_labels(tmp_path):
    rng = np.random.default_rng(0)
    def images(n):  # in [-1, 1], memgen's image range
        return rng.uniform(-1, 1, (n, 1, 4, 4))

    train = images(50).astype(np.float32)
    synth = np.concatenate([train[:20] + 0.01 * rng.standard_normal((20, 1, 4, 4)),
                            images(230)]).clip(-1, 1).astype(np.float32)
    eval_set = np.concatenate([train[20:25] + 0.01 * rng.standard_normal((5, 1, 4, 4)),
                               images(45)]).clip(-1, 1).astype(np.float32)  # drawn apart from S′
    np.savez(tmp_path / "train.npz", samples=train)
    np.savez(tmp_path / "eval.npz", samples=eval_set)
    np.savez(tmp_path / "heldout.npz", samples=images(300).astype(np.float32))
    np.savez(tmp_path / "synth.npz", samples=synth)
    (tmp_path / "shards").mkdir()
    for i, part in enumerate(np.array_split(synth, 7)):
        np.save(tmp_path / "shards" / f"synth-{i:05d}.npy", part)
    whole = _classify(tmp_path, "whole", "--synth", str(tmp_path / "synth.npz"))
    streamed = _classify(tmp_path, "streamed", "--synth", str(tmp_path / "shards"),
                         "--memory-budget", "0.01", "--state", str(tmp_path / "state.npz"))
    faiss = _classify(tmp_path, "faiss", "--synth", str(tmp_path / "synth.npz"),
                      "--backend", "faiss")
    assert (whole["labels"] == 0).sum() >= 3  # the planted copies
    for other in (streamed, faiss):
        for key in whole:
            np.testing.assert_array_equal(other[key], whole[key], err_msg=key)
    assert (tmp_path / "state.npz").exists()


def test_missing_synth_folder_is_one_line(tmp_path):
    np.savez(tmp_path / "train.npz", samples=np.zeros((3, 2), np.float32))
    np.savez(tmp_path / "eval.npz", samples=np.zeros((3, 2), np.float32))
    result = CliRunner().invoke(cli, ["classify", "--train", str(tmp_path / "train.npz"),
                                      "--eval", str(tmp_path / "eval.npz"), "--synth",
                                      str(tmp_path / "nothing-here"), "--out",
                                      str(tmp_path / "o")])
    assert result.exit_code != 0 and "Error:" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
