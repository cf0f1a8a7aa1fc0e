"""Provenance (issue #14 item 5): what classify's summary.json, a sweep's provenance.json and
its report record — command line, versions, git commit, input hashes — and that none of it
enters a cache key."""

from __future__ import annotations

import hashlib
import html
import json
import platform
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import memgen.experiments.stages as stages_module
import memgen.provenance as provenance
from memgen._version import __version__
from memgen.cli import cli
from memgen.experiments.cache import fingerprint
from memgen.experiments.config import load_config
from memgen.experiments.stages import load_pool

TINY = Path(__file__).parents[1] / "configs" / "tiny.yaml"
FIELDS = {"command", "argv", "memgen", "git_commit", "python", "torch", "numpy", "inputs"}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def check_environment(record: dict) -> None:
    assert FIELDS <= set(record)
    assert record["memgen"] == __version__
    assert record["python"] == platform.python_version()
    assert record["torch"] == torch.__version__ and record["numpy"] == np.__version__
    assert record["git_commit"] == provenance.git_commit()


@pytest.fixture
def sets(tmp_path):
    rng = np.random.default_rng(3)
    paths = {}
    for name, n in (("train", 30), ("eval", 20), ("heldout", 40)):
        paths[name] = tmp_path / f"{name}.npz"
        np.savez(paths[name], samples=rng.normal(size=(n, 4)).astype(np.float32))
    shards = tmp_path / "shards"
    shards.mkdir()
    for i, n in enumerate((25, 35)):
        np.save(shards / f"synth-{i:05d}.npy", rng.normal(size=(n, 4)).astype(np.float32))
    paths["synth"] = shards
    return paths


def test_classify_summary_records_command_versions_and_input_hashes(sets, tmp_path):
    out = tmp_path / "out"
    args = ["classify", "--train", sets["train"], "--eval", sets["eval"], "--synth",
            sets["synth"], "--heldout", sets["heldout"], "--out", out]
    invoke(*args)
    record = json.loads((out / "summary.json").read_text())["provenance"]
    check_environment(record)
    assert record["argv"] == ["memgen", *map(str, args)]
    assert record["command"].startswith("memgen classify --train ")
    inputs = record["inputs"]
    assert set(inputs) == {"train", "eval", "synth", "heldout"}
    for name, n in (("train", 30), ("eval", 20), ("heldout", 40)):
        assert inputs[name]["sha256"] == sha256(sets[name])
        assert inputs[name]["shape"] == [n, 4]
        assert inputs[name]["path"] == str(sets[name].resolve())
    synth = inputs["synth"]
    assert synth["shape"] == [60, 4]
    assert [f["sha256"] for f in synth["files"]] == [
        sha256(p) for p in sorted(sets["synth"].glob("*.npy"))]
    assert [f["shape"] for f in synth["files"]] == [[25, 4], [35, 4]]


def test_a_synth_file_is_hashed_and_the_summary_keeps_its_numbers(sets, tmp_path):
    synth = tmp_path / "synth.npz"
    np.savez(synth, samples=np.random.default_rng(4).normal(size=(50, 4)).astype(np.float32))
    invoke("classify", "--train", sets["train"], "--eval", sets["eval"], "--synth", synth,
           "--out", tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["provenance"]["inputs"]["synth"]["sha256"] == sha256(synth)
    # provenance is one more key, last; the documented keys keep their order
    assert list(summary)[-1] == "provenance"
    assert list(summary)[-3:-1] == ["config", "version"]


def test_git_commit_is_the_checkout_head_or_none():
    package = Path(provenance.__file__).parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=package, capture_output=True,
                              text=True, timeout=10)
    except OSError:
        pytest.skip("git is not installed")
    commit = provenance.git_commit()
    if commit is not None:
        assert commit == head.stdout.strip() and len(commit) == 40


def test_git_commit_never_fails(monkeypatch, tmp_path):
    # not a checkout: memgen imported from a folder outside any git repository
    fake = tmp_path / "site-packages" / "memgen"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    monkeypatch.setattr(provenance, "__file__", str(fake / "provenance.py"))
    assert provenance.git_commit() is None
    monkeypatch.undo()

    def missing(*args, **kwargs):
        raise FileNotFoundError("git")

    def slow(*args, **kwargs):
        raise subprocess.TimeoutExpired("git", provenance.GIT_TIMEOUT_S)

    for broken in (missing, slow):
        monkeypatch.setattr(provenance.subprocess, "run", broken)
        assert provenance.git_commit() is None
        assert provenance.gather()["git_commit"] is None


def test_sweep_sidecar_and_report_record_config_and_data_hashes(tmp_path):
    run = tmp_path / "run"
    invoke("sweep", TINY, "--out", run, "--set", "Ks=[2, 9]")
    record = json.loads((run / "provenance.json").read_text())
    check_environment(record)
    assert record["argv"] == ["memgen", "sweep", str(TINY), "--out", str(run), "--set",
                              "Ks=[2, 9]"]
    config = record["inputs"]["config"]
    assert config["sha256"] == sha256(TINY) and config["path"] == str(TINY.resolve())
    pool = load_pool(load_config(TINY))
    assert record["inputs"]["data"] == {"name": "circle", "root": None,
                                        "fingerprint": fingerprint(pool),
                                        "shape": list(pool.shape)}
    report = (run / "report.html").read_text()
    section = report[report.index("<h2>Provenance</h2>"):]
    for text in (record["command"], config["sha256"], fingerprint(pool), "60000 × 2",
                 record["torch"], str(record["git_commit"] or "not a git checkout")):
        assert html.escape(text) in section, text


def test_moving_the_config_reruns_nothing(tmp_path, monkeypatch):
    first = tmp_path / "a" / "tiny.yaml"
    first.parent.mkdir()
    shutil.copy(TINY, first)
    run = tmp_path / "run"
    invoke("sweep", first, "--out", run, "--set", "Ks=[2, 9]")
    keys = sorted(p.name for p in (run / "cache").iterdir())
    moved = tmp_path / "b" / "renamed.yaml"
    moved.parent.mkdir()
    shutil.move(first, moved)

    def no_work(*args, **kwargs):
        raise AssertionError("a stage ran again")

    monkeypatch.setattr(stages_module, "generate", no_work)
    monkeypatch.setattr(stages_module, "classify_sets", no_work)
    result = invoke("--verbose", "sweep", moved, "--out", run, "--set", "Ks=[2, 9]")
    assert sorted(p.name for p in (run / "cache").iterdir()) == keys
    assert "K=2: eval cached, synth cached, classify cached" in result.stderr
    config = json.loads((run / "provenance.json").read_text())["inputs"]["config"]
    assert config["path"] == str(moved.resolve()) and config["sha256"] == sha256(TINY)
    # no cached stage output records where or how it was run
    for summary in (run / "cache").glob("classify-*/summary.json"):
        assert "provenance" not in json.loads(summary.read_text())


def test_file_record_hashes_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "_CHUNK", 7)
    path = tmp_path / "blob.bin"
    path.write_bytes(bytes(range(256)) * 3)
    record = provenance.file_record(path)
    assert record == {"path": str(path.resolve()), "sha256": sha256(path), "bytes": 768,
                      "shape": None}
