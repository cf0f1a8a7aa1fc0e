"""Issue #25, a new user's odd inputs: each bad input refused before any work, and no
silently wrong number."""

import numpy as np
import pytest
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
