"""--quiet and --verbose on the main group, and progress bars on stderr only (issue #14
item 6): results on stdout are the same whatever the flags."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from memgen.cli import cli

TINY = Path(__file__).parents[1] / "configs" / "tiny.yaml"
CLI = Path(__file__).parents[1] / "src" / "memgen" / "cli"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
BAR_MARKS = ("\r", "█", "%|", "/s]")  # what tqdm draws


def has_bar(text: str) -> bool:
    return any(mark in text for mark in BAR_MARKS)


def memgen(cwd: Path, *args) -> subprocess.CompletedProcess:
    """A real process, so that stdout and stderr are the streams a terminal gets."""
    cwd.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-m", "memgen", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stderr
    return done


def three_ways(tmp_path: Path, *args) -> dict[str, subprocess.CompletedProcess]:
    """The same command plain, --quiet and --verbose, each in its own folder (the same
    relative --out, so the same stdout)."""
    return {flag: memgen(tmp_path / flag.strip("-"), *([flag] if flag else []), *args)
            for flag in ("", "--quiet", "--verbose")}


@pytest.fixture
def sets(tmp_path):
    rng = np.random.default_rng(5)
    paths = {}
    for name, n in (("train", 60), ("eval", 80), ("heldout", 120)):
        paths[name] = tmp_path / f"{name}.npz"
        np.savez(paths[name], samples=rng.normal(size=(n, 8)).astype(np.float32))
    return paths


def test_classify_quiet_verbose_and_bars_on_stderr_only(sets, tmp_path):
    runs = three_ways(tmp_path, "classify", "--train", sets["train"], "--eval", sets["eval"],
                      "--heldout", sets["heldout"], "--memory-budget", 0.005, "--out", "out")
    plain, quiet, verbose = runs[""], runs["--quiet"], runs["--verbose"]
    assert has_bar(plain.stderr) and "kNN" in plain.stderr  # bars are drawn, on stderr
    assert not any(has_bar(r.stdout) for r in runs.values())
    assert "label" in plain.stdout and "wrote out/summary.json" in plain.stdout
    assert quiet.stdout == plain.stdout == verbose.stdout
    assert quiet.stderr == ""
    train_hash = hashlib.sha256(sets["train"].read_bytes()).hexdigest()
    for line in ("memgen 0.1.0 (", f"--train {sets['train']}: 60 × 8, sha256 {train_hash}",
                 "--heldout", "classified in"):
        assert line in verbose.stderr and line not in plain.stderr, line


def test_sweep_quiet_verbose_and_bars_on_stderr_only(tmp_path):
    runs = three_ways(tmp_path, "sweep", TINY, "--set", "Ks=[2, 9]", "--out", "run")
    plain, quiet, verbose = runs[""], runs["--quiet"], runs["--verbose"]
    assert has_bar(plain.stderr) and "sweep (local)" in plain.stderr
    assert not any(has_bar(r.stdout) for r in runs.values())
    assert "SC:" in plain.stdout and quiet.stdout == plain.stdout == verbose.stdout
    assert quiet.stderr == ""
    assert "K=2: eval ran" in verbose.stderr and "K=9: eval ran" in verbose.stderr
    assert "stages " in verbose.stderr and "aggregate" in verbose.stderr
    assert "K=2:" not in plain.stderr
    again = memgen(tmp_path / "verbose", "-v", "sweep", TINY, "--set", "Ks=[2, 9]", "--out",
                   "run")
    assert "K=2: eval cached, synth cached, classify cached" in again.stderr
    assert again.stdout == plain.stdout


def test_quiet_and_verbose_exclude_each_other(sets, tmp_path):
    result = CliRunner().invoke(cli, ["--quiet", "--verbose", "classify", "--train",
                                      str(sets["train"]), "--eval", str(sets["eval"]),
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "exclude each other" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["generate", "train"])
def test_quiet_silences_the_bars_of_generate_and_train(sets, tmp_path, command, one_thread):
    args = {"generate": ["generate", "--exact", sets["train"], "--n", 8, "--steps", 5,
                         "--batch-size", 4, "--shard-size", 4],
            "train": ["train", "--data", "circle", "--K", 4, "--preset", "toy-mlp",
                      "--iterations", 3, "--batch-size", 4]}[command]
    results = {}
    for flag in ("", "--quiet"):
        out = tmp_path / f"{command}{flag}"
        results[flag] = CliRunner().invoke(
            cli, [*([flag] if flag else []), *map(str, args), "--out", str(out)])
        assert results[flag].exit_code == 0, results[flag].output
    assert has_bar(results[""].stderr) and not has_bar(results[""].stdout)
    assert results["--quiet"].stderr == ""
    assert (results["--quiet"].stdout.replace("--quiet", "")
            == results[""].stdout)


def test_every_command_takes_its_progress_flag_from_quiet():
    literal = [f"{path.name}:{i}" for path in sorted(CLI.glob("*.py"))
               for i, line in enumerate(path.read_text().splitlines(), 1)
               if "progress=True" in line or "file=sys.stdout" in line]
    assert literal == []
