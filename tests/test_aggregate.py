"""memgen aggregate (bring-your-own sweeps): classify folders → the sweep's own fractions.csv,
the refusals, and plot fractions --title with its null curves."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import memgen.cli.measure as measure_module
from memgen.cli import cli
from memgen.errors import UserError
from memgen.experiments.aggregate import Source, collect, parse_sources
from memgen.experiments.config import load_config
from memgen.experiments.stages import load_pool, run_K

TINY = Path(__file__).parents[1] / "configs" / "tiny.yaml"
KS = "Ks=[2, 9]"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def ok(result):
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def refused(result, phrase: str, out: Path) -> None:
    """Exit 1, one line on stderr naming the problem, no traceback, nothing written."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1, result.output
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert phrase in lines[0], lines[0]
    assert not out.exists()


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A tiny sweep (K = 2, 9) and its classify folders by K, from the sweep's StageResults
    (cached: run_K only reads them back)."""
    run_dir = tmp_path_factory.mktemp("sweep") / "run"
    ok(run("sweep", TINY, "--out", run_dir, "--set", KS))
    config = load_config(TINY, [KS])
    pool = load_pool(config)
    folders = {K: run_K(run_dir, pool, K, config).folder for K in config.Ks}
    assert sorted(folders.values()) == sorted(run_dir.glob("cache/classify-*"))
    return run_dir, folders


def test_aggregate_round_trip_equals_the_sweeps_own_table(sweep, tmp_path):
    run_dir, folders = sweep
    by_n_train = tmp_path / "by-n-train.csv"  # K from summary.json, folders in any order
    ok(run("aggregate", *reversed(list(folders.values())), "--out", by_n_train))
    tagged = tmp_path / "tagged.csv"  # K from the sweep's StageResults, as DIR:K
    ok(run("aggregate", *(f"{f}:{K}" for K, f in folders.items()), "--out", tagged))
    by_option = tmp_path / "by-option.csv"
    ok(run("aggregate", *folders.values(), "--K", *folders, "--out", by_option))
    expected = (run_dir / "fractions.csv").read_text()
    for path in (by_n_train, tagged, by_option):
        assert path.read_text() == expected  # same columns, rows and values
    first = ok(run("capacities", run_dir / "fractions.csv", "--bootstrap", 200)).output
    assert ok(run("capacities", by_n_train, "--bootstrap", 200)).output == first
    assert first.count("C:") == 3


def test_round_trip_through_the_python_function(sweep):
    _, folders = sweep
    collected = collect(parse_sources([str(f) for f in folders.values()]))
    assert [r.K for r in collected.rows] == sorted(folders)
    assert [r.folder for r in collected.rows] == [folders[K] for K in sorted(folders)]
    assert collected.warnings == ()


def test_refusals_write_nothing(sweep, tmp_path):
    _, folders = sweep
    a, b = folders[2], folders[9]
    out = tmp_path / "fractions.csv"
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(run("aggregate", a, b, "--K", 5, 5, "--out", out), "K = 5 for both", out)
    refused(run("aggregate", a, f"{b}:2", "--out", out), "K = 2 for both", out)
    refused(run("aggregate", a, empty, "--out", out), "holds no summary.json", out)
    refused(run("aggregate", a, tmp_path / "absent", "--out", out), "no such folder", out)
    refused(run("aggregate", a, b, "--K", 2, "--out", out), "1 --K value(s) for 2", out)
    refused(run("aggregate", a, f"{b}:9", "--K", 2, 9, "--out", out), "tag the folders one way",
            out)
    refused(run("aggregate", a, a, "--K", 2, 3, "--out", out), "is given twice", out)
    refused(run("aggregate", f"{a}:0", "--out", out), "at least 1", out)


def test_inconsistent_or_old_folders(sweep, tmp_path):
    _, folders = sweep
    out = tmp_path / "fractions.csv"
    mixed = shutil.copytree(folders[2], tmp_path / "mixed")  # labels of another run
    shutil.copy(folders[9] / "labels.npz", mixed / "labels.npz")
    refused(run("aggregate", mixed, "--out", out), "labels.npz counts", out)
    no_labels = shutil.copytree(folders[2], tmp_path / "no-labels")
    (no_labels / "labels.npz").unlink()
    refused(run("aggregate", no_labels, "--out", out), "holds no labels.npz", out)
    old = shutil.copytree(folders[9], tmp_path / "old")  # an earlier version: no n_train
    summary = json.loads((old / "summary.json").read_text())
    del summary["n_train"]
    (old / "summary.json").write_text(json.dumps(summary))
    refused(run("aggregate", old, "--out", out), "records no n_train", out)
    ok(run("aggregate", f"{old}:9", "--out", out))
    assert out.read_text().splitlines()[1].startswith("9,")


def test_output_file_needs_overwrite_and_k_mismatch_warns(sweep, tmp_path):
    _, folders = sweep
    out = tmp_path / "fractions.csv"
    out.write_text("someone else's file\n")
    result = run("aggregate", *folders.values(), "--out", out)
    assert result.exit_code == 1 and "exists" in result.stderr
    assert out.read_text() == "someone else's file\n"
    result = ok(run("aggregate", f"{folders[2]}:3", folders[9], "--out", out, "--overwrite"))
    assert "tagged K = 3, but it was classified against 2 training samples" in result.stderr
    assert [line.split(",")[0] for line in out.read_text().splitlines()[1:]] == ["3", "9"]


def test_a_folder_named_like_dir_k_is_taken_whole_unless_ambiguous(tmp_path):
    odd = tmp_path / "run:7"
    odd.mkdir()
    assert parse_sources([str(odd)]) == [Source(odd, None)]
    (tmp_path / "run").mkdir()
    with pytest.raises(UserError, match="ambiguous"):
        parse_sources([str(odd)])
    assert parse_sources([f"{tmp_path / 'run'}:4"]) == [Source(tmp_path / "run", 4)]


def test_plot_fractions_title_and_null_curves(sweep, tmp_path, monkeypatch):
    run_dir, _ = sweep
    drawn = {}

    def spy(*args, **kwargs):
        drawn["kwargs"] = kwargs
        drawn["fig"] = original(*args, **kwargs)
        return drawn["fig"]

    original = measure_module.plot_fractions
    monkeypatch.setattr(measure_module, "plot_fractions", spy)
    out = tmp_path / "fractions.png"
    ok(run("plot", "fractions", run_dir / "fractions.csv", "--title", "my models",
           "--out", out))
    assert out.read_bytes()[:8] == PNG_MAGIC
    ax = drawn["fig"].axes[0]
    assert ax.get_title() == "my models"
    null = drawn["kwargs"]["null"]
    assert null.shape == (2, 3) and np.isfinite(null).all()
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) == 3 + 1  # one null curve per label, and its legend entry
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("null rate" in text and "held-out" in text for text in legend)


def test_malformed_tags_and_summaries_are_user_errors(sweep, tmp_path):
    """Exit 1 with the problem named, not an internal error: a K of non-ASCII digits, and
    summary.json fields of the wrong type or lacking labels."""
    _, folders = sweep
    out = tmp_path / "fractions.csv"
    assert parse_sources([f"{folders[2]}:²"]) == [Source(Path(f"{folders[2]}:²"), None)]
    refused(run("aggregate", f"{folders[2]}:²", "--out", out), "no such folder", out)
    good = json.loads((folders[2] / "summary.json").read_text())
    broken = {"counts is int": dict(good, counts=5), "fractions lacks memorized":
              dict(good, fractions={}), "ci95['memorized'] is 0.5":
              dict(good, ci95=dict(good["ci95"], memorized=0.5)), "n_train is 0":
              dict(good, n_train=0), "n_train is '2'": dict(good, n_train="2"),
              "expected an object": [1]}
    for i, (phrase, summary) in enumerate(broken.items()):
        folder = shutil.copytree(folders[2], tmp_path / f"broken{i}")
        (folder / "summary.json").write_text(json.dumps(summary))
        refused(run("aggregate", folder, "--out", out), phrase, out)
