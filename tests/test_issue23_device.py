"""--device is a user's choice, checked while the options are read (issue #23, item 8):
an unknown name or a device this machine lacks is one line, exit 1, before any work —
train used to leave train.npz behind and call it a bug (exit 70); generate blamed the
checkpoint."""

from __future__ import annotations

import click
import pytest
import torch
from test_cli import assert_fails, run

from memgen.cli.devices import Device
from memgen.errors import UserError

COMMANDS = {
    "train": ["train", "--data", "digits", "--K", "8", "--preset", "digits-8"],
    "generate": ["generate", "--exact", "missing.npz", "--n", "2"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("device, phrase", [("foo", "not a torch device"),
                                            ("cuda", "no CUDA device"),
                                            ("cuda:7", "CUDA device"),
                                            ("xla", "cpu, cuda or mps")])
def test_unavailable_devices_are_user_errors_before_any_work(tmp_path, command, device, phrase):
    if torch.cuda.device_count() > 7:
        pytest.skip("this machine has the devices")
    out = tmp_path / "out"
    result = run(*COMMANDS[command], "--device", device, "--out", out)
    assert_fails(result, phrase, out, tmp_path)


@pytest.mark.parametrize("device", ["cpu", "cpu:0"])
def test_cpu_devices_are_the_cpu(device):
    assert Device().convert(device, None, None) == "cpu"


def test_device_errors_are_user_errors_not_click_usage():
    with pytest.raises(UserError, match="--device gpu"):
        Device().convert("gpu", None, None)
    assert not issubclass(UserError, click.ClickException)
