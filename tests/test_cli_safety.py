"""Runs that are safe for the user's files (issue #12, items 10–12), through the real CLI.

Output locations are checked before any work; a command writes only into a new folder or
one it wrote itself; user errors are one line (exit 1), internal errors say they are bugs
(exit 70, traceback with --debug), and Ctrl-C exits 130 with nothing half-written.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_cli import hidden_leftovers, run, save

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MEMGEN_DEBUG": ""}


def memgen(*args, env=None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "memgen", *map(str, args)],
                          capture_output=True, text=True, env=env or ENV, timeout=120,
                          **kwargs)


@pytest.fixture
def sets(tmp_path):
    rng = np.random.default_rng(0)
    return {"train": save(tmp_path / "train.npz", rng.normal(size=(30, 4)).astype(np.float32)),
            "eval": save(tmp_path / "eval.npz", rng.normal(size=(20, 4)).astype(np.float32)),
            "root": tmp_path}


def _classify(sets, out, *extra):
    return run("classify", "--train", sets["train"], "--eval", sets["eval"], *extra,
               "--out", out)


def _one_line_error(stderr: str, phrase: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    assert phrase in lines[0], lines[0]
    assert "Traceback" not in stderr


# ---------------------------------------------------------------- 10. outputs checked first


def test_out_under_a_file_fails_before_work_in_a_subprocess(sets):
    blocker = sets["root"] / "blocker"
    blocker.write_text("a file")
    started = time.perf_counter()
    result = memgen("classify", "--train", sets["train"], "--eval", sets["eval"],
                    "--out", blocker / "out")
    assert result.returncode == 1
    _one_line_error(result.stderr, "is a file, not a folder")
    assert blocker.read_text() == "a file"
    assert time.perf_counter() - started < 60


def test_out_under_proc_fails_before_work_in_a_subprocess(sets):
    result = memgen("capacities", sets["root"] / "missing.csv", "--out",
                    "/proc/memgen-test/caps.json")
    assert result.returncode == 1
    _one_line_error(result.stderr, "/proc")


CASES = {  # command line before --out, the kind of output
    "classify": (lambda s: ["classify", "--train", s["train"], "--eval", s["eval"]], "dir"),
    "capacities": (lambda s: ["capacities", s["csv"]], "file"),
    "plot fractions": (lambda s: ["plot", "fractions", s["csv"]], "file"),
    "landscape": (lambda s: ["landscape", "--K", 2], "dir"),
    "phase": (lambda s: ["phase", "--sigma", 0.3, "--K", 2, "--n-starts", 8], "dir"),
    "sweep": (lambda s: ["sweep", Path(__file__).parents[1] / "configs" / "tiny.yaml"], "dir"),
    "hygiene duplicates": (lambda s: ["hygiene", "duplicates", "--train", s["train"]], "dir"),
}


@pytest.mark.parametrize("command", sorted(CASES))
@pytest.mark.parametrize("where", ["under-a-file", "proc"])
def test_every_command_checks_its_output_location_first(sets, command, where, monkeypatch):
    import memgen.cli.experiments
    import memgen.cli.measure
    import memgen.experiments.sweep

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the output location was checked")

    # the names as the commands' modules bound them (patched there, undone after the test)
    for module, name in ((memgen.experiments.sweep, "load_pool"),
                         (memgen.cli.measure, "classify_sets"),
                         (memgen.cli.experiments, "run_phase"),
                         (memgen.cli.experiments, "run_landscape")):
        monkeypatch.setattr(module, name, no_work)
    sets["csv"] = sets["root"] / "fractions.csv"
    sets["csv"].write_text("K,memorized,spurious,generalized\n2,1,0,0\n9,0.5,0,0.5\n")
    blocker = sets["root"] / "blocker"
    blocker.write_text("x")
    args, kind = CASES[command]
    base = blocker if where == "under-a-file" else Path("/proc/memgen-test")
    out = base / ("out.json" if command == "capacities" else
                  "out.png" if kind == "file" else "out")
    result = run(*args(sets), "--out", out)
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and len(result.output.splitlines()) == 1
    assert ("is a file" if where == "under-a-file" else "not writable") in result.output


# ------------------------------------------------- 11. never overwrite another's results


def test_classify_refuses_another_commands_folder_by_name_in_a_subprocess(sets):
    landscape = sets["root"] / "landscape"
    assert run("landscape", "--K", 2, "--out", landscape).exit_code == 0
    before = {p.name: p.read_bytes() for p in landscape.iterdir() if p.is_file()}
    result = memgen("classify", "--train", sets["train"], "--eval", sets["eval"],
                    "--out", landscape)
    assert result.returncode == 1
    _one_line_error(result.stderr, "holds the results of memgen landscape")
    assert {p.name: p.read_bytes() for p in landscape.iterdir() if p.is_file()} == before
    # --overwrite replaces it, and the folder is then classify's
    forced = memgen("classify", "--train", sets["train"], "--eval", sets["eval"],
                    "--out", landscape, "--overwrite")
    assert forced.returncode == 0, forced.stderr
    assert not (landscape / "landscape.png").exists() and (landscape / "labels.npz").exists()
    assert json.loads((landscape / ".memgen").read_text())["command"] == "classify"


def test_a_command_may_rewrite_its_own_folder(sets):
    out = sets["root"] / "out"
    assert _classify(sets, out).exit_code == 0
    assert _classify(sets, out, "--seed", 3).exit_code == 0
    assert hidden_leftovers(sets["root"]) == []


def test_classify_refuses_a_sweep_folder_naming_the_sweep(sets, tmp_path):
    tiny = Path(__file__).parents[1] / "configs" / "tiny.yaml"
    run_dir = tmp_path / "sweep"
    assert run("sweep", tiny, "--out", run_dir, "--set", "Ks=[2]").exit_code == 0
    result = _classify(sets, run_dir)
    assert result.exit_code == 1 and "holds the results of memgen sweep" in result.output
    # and a sweep refuses a classify folder
    out = tmp_path / "labels"
    assert _classify(sets, out).exit_code == 0
    refused = run("sweep", tiny, "--out", out)
    assert refused.exit_code == 1 and "memgen classify" in refused.output


def test_a_sweep_folder_of_an_earlier_version_is_resumed(tmp_path):
    tiny = Path(__file__).parents[1] / "configs" / "tiny.yaml"
    run_dir = tmp_path / "old"
    assert run("sweep", tiny, "--out", run_dir, "--set", "Ks=[2]").exit_code == 0
    (run_dir / ".memgen").unlink()  # as written before folders were marked
    stages = sorted(p.name for p in (run_dir / "cache").iterdir())
    assert run("sweep", tiny, "--out", run_dir, "--set", "Ks=[2]", "--dry-run").exit_code == 0
    again = run("sweep", tiny, "--out", run_dir, "--set", "Ks=[2]")
    assert again.exit_code == 0, again.output
    assert sorted(p.name for p in (run_dir / "cache").iterdir()) == stages  # resumed
    assert json.loads((run_dir / ".memgen").read_text())["command"] == "sweep"


def test_a_failed_write_removes_only_what_it_made(tmp_path):
    from memgen.io import atomic_output_dir

    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "b").mkdir()  # another command's finished output beside it
    with pytest.raises(RuntimeError):
        with atomic_output_dir(tmp_path / "new" / "deeper" / "a", "classify"):
            raise RuntimeError("the work failed")
    assert (tmp_path / "new" / "b").is_dir()
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["b"]


def test_existing_files_need_overwrite(sets):
    csv = sets["root"] / "fractions.csv"
    csv.write_text("K,memorized,spurious,generalized\n2,1,0,0\n9,0.5,0,0.5\n")
    target = sets["root"] / "caps.json"
    target.write_text("{}")
    refused = run("capacities", csv, "--out", target)
    assert refused.exit_code == 1 and "exists" in refused.output
    assert target.read_text() == "{}"
    assert run("capacities", csv, "--out", target, "--overwrite").exit_code == 0
    assert "MC" in json.loads(target.read_text())


# --------------------------------------------------------------------- 12. errors, Ctrl-C

BUG = ("import sys, memgen.metrics.classify as a\n"
       "def broken(*args, **kwargs):\n"
       "    raise ValueError('a bug: operands could not be broadcast')\n"
       "a.classify_sets = broken\n"
       "from memgen.cli import main\n"
       "sys.argv = ['memgen'] + sys.argv[1:]\n"
       "main()\n")


def _buggy(sets, *flags, env=None):
    return subprocess.run([sys.executable, "-c", BUG, *flags, "classify", "--train",
                           str(sets["train"]), "--eval", str(sets["eval"]), "--out",
                           str(sets["root"] / "out")],
                          capture_output=True, text=True, env=env or ENV, timeout=120)


def test_an_internal_error_is_not_disguised_as_a_user_error(sets):
    result = _buggy(sets)
    assert result.returncode == 70
    assert "internal error" in result.stderr and "bug in memgen" in result.stderr
    assert "a bug: operands could not be broadcast" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (sets["root"] / "out").exists()


def test_debug_shows_the_traceback(sets):
    flagged = _buggy(sets, "--debug")
    assert flagged.returncode == 70 and "Traceback" in flagged.stderr
    assert "in broken" in flagged.stderr
    by_env = _buggy(sets, env={**ENV, "MEMGEN_DEBUG": "1"})
    assert by_env.returncode == 70 and "Traceback" in by_env.stderr
    # a user error under --debug: its traceback too, still exit 1
    user = memgen("--debug", "classify", "--train", sets["root"] / "nope.npz", "--eval",
                  sets["eval"], "--out", sets["root"] / "o")
    assert user.returncode == 1 and "Traceback" in user.stderr and "no such file" in user.stderr


def default_sigint() -> None:
    """In the child before exec: SIGINT at its default and unblocked, whatever the test
    process inherited or set (a child started with SIGINT ignored never sees Ctrl-C)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_ctrl_c_exits_130_and_leaves_nothing_half_written(tmp_path):
    out = tmp_path / "phase"
    proc = subprocess.Popen(
        [sys.executable, "-m", "memgen", "phase", "--data", "circle", "--sigma", "0.02",
         "--K", "2000", "--n-starts", "200000", "--max-iter", "100000", "--tol", "0",
         "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=ENV,
        preexec_fn=default_sigint)
    time.sleep(8)  # imports, then well into the work
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    try:
        _, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # never leave the run behind (it held a core for hours)
        proc.kill()
        proc.communicate()
        raise
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []
