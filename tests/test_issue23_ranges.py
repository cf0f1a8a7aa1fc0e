"""Every command that reads a sample file takes --input-range (issue #23, item 3): the
contract's refusal names the flag, so each command that can refuse must also accept it.
Without it, [0, 255] images are refused naming --input-range; with it, the command's
result equals the one on the same images given in [-1, 1]."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_cli import assert_fails, ok, run, save


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (6, 1, 4, 4)).astype(np.float32)
    x[1] = x[0] + 0.01 * rng.normal(size=x[0].shape)  # a near-duplicate pair
    x = np.clip(x, -1, 1)
    save(tmp_path / "minus1.npz", x)
    save(tmp_path / "u255.npz", (x + 1) * 127.5)
    return tmp_path


COMMANDS = {  # id: (command line with {file}, the output file whose numbers must agree)
    "hygiene duplicates": (["hygiene", "duplicates", "--train", "{file}"], "summary.json"),
    "basins curvature": (["basins", "curvature", "--exact", "{file}", "--samples", "{file}",
                          "--limit", "2"], "curvature.csv"),
    "diagnose": (["diagnose", "--no-progress", "--exact", "{file}", "--schedule", "ve",
                  "--sigma", "0.5", "--n", "4"], "diagnose.csv"),
}


def _line(command, file):
    return [file if a == "{file}" else a for a in command]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_commands_refuse_then_convert_images_in_0_255(images, name):
    command, result_file = COMMANDS[name]
    out = images / "refused"
    assert_fails(run(*_line(command, images / "u255.npz"), "--out", out), "--input-range 0,255",
                 out, images)
    ok(run(*_line(command, images / "u255.npz"), "--input-range", "0,255", "--out",
           images / "converted"))
    ok(run(*_line(command, images / "minus1.npz"), "--out", images / "plain"))
    converted = (images / "converted" / result_file).read_text()
    plain = (images / "plain" / result_file).read_text()
    if result_file.endswith(".json"):
        converted, plain = json.loads(converted), json.loads(plain)
        assert converted["pairs"] == plain["pairs"] == 1
    else:
        a = np.genfromtxt(images / "converted" / result_file, delimiter=",", names=True)
        b = np.genfromtxt(images / "plain" / result_file, delimiter=",", names=True)
        for column in a.dtype.names:
            np.testing.assert_allclose(a[column], b[column], rtol=1e-4, atol=1e-5,
                                       err_msg=column)


def test_input_range_without_a_file_to_convert_is_refused(tmp_path):
    out = tmp_path / "out"
    (tmp_path / "model.pt").write_bytes(b"not read: the option is refused first")
    result = run("diagnose", "--checkpoint", tmp_path / "model.pt", "--input-range", "0,1",
                 "--out", out)
    assert_fails(result, "--input-range", out, tmp_path)


@pytest.mark.parametrize("command", [
    ["hygiene", "duplicates", "--data", "circle", "--K", "20"],
    ["hygiene", "halves", "--checkpoint-a", "{a}", "--checkpoint-b", "{b}"],
])
def test_hygiene_refuses_input_range_without_a_users_file(tmp_path, command):
    """A named data set, or memgen's own train.npz, is in [-1, 1] already: --input-range
    there would be ignored (it was, silently)."""
    for name in "ab":
        (tmp_path / f"{name}.pt").write_bytes(name.encode())  # refused before it is read
    line = [a.format(a=tmp_path / "a.pt", b=tmp_path / "b.pt") for a in command]
    out = tmp_path / "out"
    assert_fails(run(*line, "--input-range", "0,1", "--out", out), "--input-range", out,
                 tmp_path)
