"""Issue #23, items 6-8: output folders are safe (--overwrite, symlinks, a lock), global flags
after the subcommand, strict sweep configs, and user mistakes said as such (exit 1, one line)
— through the real CLI, in subprocesses where the issue describes a command line."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np
import pytest
from test_cli import assert_fails, hidden_leftovers, ok, run, save
from test_cli_safety import ENV, _one_line_error, memgen, sets  # noqa: F401 (sets: a fixture)

from memgen.cli import cli
from memgen.cli.main import hoist_global_flags
from memgen.errors import UserError
from memgen.experiments.config import load_config

TINY = Path(__file__).parents[1] / "configs" / "tiny.yaml"


def classify_args(sets, out, *extra):
    return ["classify", "--train", sets["train"], "--eval", sets["eval"], *extra, "--out", out]


def generate_args(sets, out, *extra):
    return ["generate", "--exact", sets["train"], "--n", 4, "--steps", 5, *extra, "--out", out]


def lock_file(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}.memgen-lock")


def foreign_folder(root: Path) -> Path:
    folder = root / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("not memgen's")
    return folder


# ------------------------------------------------------- 6. --overwrite: memgen's folders only


def test_overwrite_refuses_a_folder_of_foreign_files_in_a_subprocess(sets):
    folder = foreign_folder(sets["root"])
    result = memgen(*classify_args(sets, folder, "--overwrite"))
    assert result.returncode == 1
    _one_line_error(result.stderr, "memgen did not write")
    assert sorted(p.name for p in folder.iterdir()) == ["thesis.tex"]
    assert (folder / "thesis.tex").read_text() == "not memgen's"
    assert hidden_leftovers(sets["root"]) == []


@pytest.mark.parametrize("command", ["generate", "sweep"])
def test_overwrite_of_a_resumable_command_refuses_foreign_files(sets, command):
    folder = foreign_folder(sets["root"])
    args = (generate_args(sets, folder, "--overwrite") if command == "generate" else
            ["sweep", TINY, "--set", "Ks=[2]", "--out", folder, "--overwrite"])
    assert_fails(run(*args), "memgen did not write", None, sets["root"])
    assert sorted(p.name for p in folder.iterdir()) == ["thesis.tex"]


def test_overwrite_replaces_another_commands_folder_and_an_empty_one(sets):
    landscape = sets["root"] / "landscape"
    ok(run("landscape", "--K", 2, "--out", landscape))
    ok(run(*generate_args(sets, landscape, "--overwrite")))
    assert json.loads((landscape / ".memgen").read_text())["command"] == "generate"
    assert not (landscape / "landscape.png").exists()
    empty = sets["root"] / "empty"
    empty.mkdir()
    ok(run(*classify_args(sets, empty)))
    assert (empty / "labels.npz").is_file()


# --------------------------------------------------------------- 6. a symlinked --out


def test_a_symlinked_out_is_written_through_in_a_subprocess(sets):
    target, link = sets["root"] / "target", sets["root"] / "link"
    target.mkdir()
    link.symlink_to(target)
    for _ in range(2):  # a new folder, then a rewrite of classify's own
        result = memgen(*classify_args(sets, link))
        assert result.returncode == 0, result.stderr
        assert link.is_symlink() and link.resolve() == target.resolve()
        assert sorted(p.name for p in target.iterdir()) == [".memgen", "labels.npz",
                                                           "summary.json"]
    assert hidden_leftovers(sets["root"]) == []  # no .link.old.PID, no lock file


def test_a_symlinked_out_of_a_resumable_command_is_written_through(sets):
    target, link = sets["root"] / "target", sets["root"] / "link"
    link.symlink_to(target)  # dangling: the target is made
    ok(run(*generate_args(sets, link)))
    assert link.is_symlink() and (target / "samples.npz").is_file()
    ok(run(*generate_args(sets, link)))  # resumed through the link
    assert link.is_symlink() and hidden_leftovers(sets["root"]) == []


def test_a_symlinked_out_to_a_file_is_refused(sets):
    (sets["root"] / "file").write_text("x")
    link = sets["root"] / "link"
    link.symlink_to(sets["root"] / "file")
    assert_fails(run(*classify_args(sets, link)), "is a file", None, sets["root"], usage=True)
    assert link.is_symlink() and (sets["root"] / "file").read_text() == "x"


def test_a_symlink_loop_is_refused(sets):
    a, b = sets["root"] / "a", sets["root"] / "b"
    a.symlink_to(b)
    b.symlink_to(a)
    assert_fails(run(*classify_args(sets, a)), "loop", None, sets["root"])


# ---------------------------------------------------------------------------- 6. the lock

HOLDER = ("import sys, time\n"
          "from pathlib import Path\n"
          "from memgen.io import OutputLock\n"
          "OutputLock(Path(sys.argv[1]).absolute()).acquire()\n"
          "print('held', flush=True)\n"
          "time.sleep(120)\n")


def test_a_folder_in_use_by_another_process_is_refused_until_it_dies(sets):
    out = sets["root"] / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE,
                              text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "held"
        refused = memgen(*classify_args(sets, out))
        assert refused.returncode == 1
        _one_line_error(refused.stderr, f"{out} is in use by another memgen run (pid "
                                        f"{holder.pid})")
        assert not out.exists()
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: the kernel releases the lock
        holder.wait(timeout=30)
    assert lock_file(out).exists()  # what a killed run leaves: reused, then removed
    result = memgen(*classify_args(sets, out))
    assert result.returncode == 0, result.stderr
    assert hidden_leftovers(sets["root"]) == []


@pytest.mark.parametrize("command", ["classify", "generate", "sweep"])
def test_a_folder_in_use_is_refused_before_any_work(sets, command):
    """The test process holds the lock as a running memgen does; the command, run here
    through click, is another open file and is refused at its first check."""
    out = sets["root"] / "out"
    args = {"classify": classify_args(sets, out), "generate": generate_args(sets, out),
            "sweep": ["sweep", TINY, "--set", "Ks=[2]", "--out", out]}[command]
    fd = os.open(lock_file(out), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, b"4242\n")
        result = run(*args)
    finally:
        os.unlink(lock_file(out))
        os.close(fd)
    assert_fails(result, "in use by another memgen run (pid 4242)", out, sets["root"])
    ok(run(*args))  # released: the same command runs
    assert hidden_leftovers(sets["root"]) == []


def default_sigint() -> None:
    """In the child before exec: SIGINT at its default and unblocked, whatever the test
    process inherited or set (a child started with SIGINT ignored never sees Ctrl-C)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_two_runs_into_one_out_one_is_refused(sets):
    """A long phase run holds its --out from its first check: a classify into the same
    folder meanwhile is refused (before, both reported success)."""
    out = sets["root"] / "shared"
    proc = subprocess.Popen(
        [sys.executable, "-m", "memgen", "phase", "--data", "circle", "--sigma", "0.02",
         "--K", "2000", "--n-starts", "200000", "--max-iter", "100000", "--tol", "0",
         "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
        preexec_fn=default_sigint)
    try:
        deadline = time.monotonic() + 60
        while not lock_file(out).exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()
        second = run(*classify_args(sets, out))
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # never leave the run behind on a slow machine
            proc.kill()
            proc.communicate()
            raise
    assert_fails(second, "in use by another memgen run", out, sets["root"])


def test_a_resumable_command_that_fails_leaves_no_folder(sets):
    out = sets["root"] / "new" / "deeper" / "gen"
    result = run("generate", "--exact", sets["train"], "--n", 4, "--steps", 0, "--out", out)
    assert_fails(result, "steps", out, sets["root"])
    assert sorted(p.name for p in sets["root"].iterdir()) == ["eval.npz", "train.npz"]


def test_the_lock_is_held_once_per_process_and_removed_on_release(tmp_path):
    from memgen.io import OutputLock, output_lock, output_locks

    out = tmp_path / "a" / "out"
    with output_locks():
        lock = output_lock(out)
        lock.hold()
        assert lock.fd is not None and lock_file(out).read_text().strip() == str(os.getpid())
        assert output_lock(out) is lock  # a second check in the same process: the same lock
        with pytest.raises(UserError, match="in use"):
            OutputLock(out.absolute()).acquire()  # another open file: as another process
    assert not (tmp_path / "a").exists()  # the lock file and the folder made for it


# ---------------------------------------------------- 7. global flags after the subcommand


def test_quiet_verbose_and_debug_after_the_subcommand_in_subprocesses(sets):
    quiet = memgen(*classify_args(sets, sets["root"] / "q"), "-q")
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    verbose = memgen(*classify_args(sets, sets["root"] / "v"), "-v")
    assert verbose.returncode == 0 and "--train" in verbose.stderr  # inputs with their hashes
    assert "sha256" in verbose.stderr
    debug = memgen("classify", "--train", sets["root"] / "nope.npz", "--eval", sets["eval"],
                   "--out", sets["root"] / "d", "--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    both = memgen(*classify_args(sets, sets["root"] / "b"), "--quiet", "--verbose")
    assert both.returncode == 2 and "exclude each other" in both.stderr


@pytest.mark.parametrize("args, expected", [
    (["classify", "--out", "o", "-q"], ["-q", "classify", "--out", "o"]),
    (["generate", "--name", "-q", "-v"], ["-v", "generate", "--name", "-q"]),
    (["hygiene", "-v", "duplicates", "--debug"], ["-v", "--debug", "hygiene", "duplicates"]),
    (["generate", "--shape", "1", "-v", "2", "-q"], ["-q", "generate", "--shape", "1", "-v",
                                                     "2"]),
    (["-q", "classify", "--out", "x"], ["-q", "classify", "--out", "x"]),
    (["plot", "fractions", "a.csv", "--", "-q"], ["plot", "fractions", "a.csv", "--", "-q"]),
], ids=["after", "a-value", "nested", "nargs", "before", "after-double-dash"])
def test_global_flags_move_before_the_subcommand_unless_they_are_values(args, expected):
    assert hoist_global_flags(cli, click.Context(cli), args) == expected


# --------------------------------------------------------------------- 7, 8. sweep configs


def test_a_key_given_twice_is_refused_naming_it_and_its_lines(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("Ks: [2]\nmodel: {kind: exact}\nsample:\n  steps: 20\n"
                      "  n_eval: 50\n  steps: 200\n")
    out = tmp_path / "run"
    result = run("sweep", config, "--out", out, "--dry-run")
    # OmegaConf's loader names the line of the second one (issue #24: was "lines 4 and 6")
    assert_fails(result, "the key 'steps' is given twice, line 6", out, tmp_path)
    top = tmp_path / "top.yaml"
    top.write_text("Ks: [2]\nKs: [4]\n")
    assert_fails(run("sweep", top, "--out", out), "'Ks' is given twice", out, tmp_path)
    with pytest.raises(UserError, match="'kind' is given twice"):
        load_config(TINY, ["model={kind: exact, kind: network}"])


@pytest.mark.parametrize("text, value", [("1e-3", 1e-3), ("2E-4", 2e-4), ("5.0e-4", 5e-4),
                                         ("0.002", 0.002), ("1", 1.0)])
def test_set_reads_exponent_floats_as_floats(text, value):
    assert load_config(TINY, [f"train.lr={text}"]).train.lr == value


def test_exponent_floats_in_a_config_file_and_on_the_cli(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("Ks: [2]\nmodel: {kind: exact}\nanalysis: {delta: 1e-2}\n")
    assert load_config(config).analysis.delta == 0.01
    result = run("sweep", TINY, "--out", tmp_path / "run", "--dry-run",
                 "--set", "measure.epsilon=5e-2")
    assert result.exit_code == 0, result.output
    # an integer field still wants an integer
    assert_fails(run("sweep", TINY, "--out", tmp_path / "r", "--dry-run",
                     "--set", "train.iterations=1e3"), "train.iterations", tmp_path / "r",
                 tmp_path)


def test_a_binary_file_as_config_is_one_line_in_a_subprocess(tmp_path):
    config = tmp_path / "model.pt"
    config.write_bytes(bytes(range(256)) * 8)
    result = memgen("sweep", config, "--out", tmp_path / "run")
    assert result.returncode == 1, result.stderr
    _one_line_error(result.stderr, "not a text file")
    assert not (tmp_path / "run").exists()
    folder = memgen("sweep", tmp_path, "--out", tmp_path / "run")
    assert folder.returncode in (1, 2) and "Traceback" not in folder.stderr


@pytest.mark.parametrize("overrides, phrase", [
    (["model.preset=toy-mlp"], "model.preset: has no effect with model.kind = exact"),
    (["model.objective=vp_eps"], "model.objective: has no effect"),
    (["model.kind=checkpoints", "model.path=.", "data.split=reference",
      "model.preset=cifar10"], "model.preset: has no effect with model.kind = checkpoints"),
    (["sample.eta=0.5"], "sample.eta: η is DDIM's"),
    (["sample.sampler=ddpm", "sample.eta=1"], "the sampler is ddpm"),
    (["sample.clip_denoised=false", "sample.clip_range=[-2, 2]"], "sample.clip_range"),
], ids=["preset-exact", "objective-exact", "preset-checkpoints", "eta-default-sampler",
        "eta-ddpm", "clip-range-unclipped"])
def test_options_without_effect_are_refused(tmp_path, overrides, phrase):
    out = tmp_path / "run"
    args = [a for item in overrides for a in ("--set", item)]
    assert_fails(run("sweep", TINY, "--out", out, "--dry-run", *args), phrase, out, tmp_path)


def test_options_with_effect_are_kept(tmp_path):
    config = load_config(TINY, ["sample.sampler=ddim", "sample.eta=0.5",
                                "model.kind=network", "model.preset=toy-mlp"])
    assert (config.sample.eta, config.model.preset) == (0.5, "toy-mlp")
    assert load_config(TINY, ["sample.clip_denoised=true",
                              "sample.clip_range=[-2, 2]"]).sample.clip_range == (-2.0, 2.0)


# ------------------------------------------------------------- 8. user errors, not bugs


def test_capacities_of_a_labels_npz_is_one_line_in_a_subprocess(tmp_path):
    labels = tmp_path / "labels.npz"
    np.savez(labels, labels=np.zeros(10, np.int8))
    result = memgen("capacities", labels)
    assert result.returncode == 1, result.stderr
    _one_line_error(result.stderr, "not a CSV table")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert_fails(run("capacities", empty), "no rows", None, tmp_path)
    assert_fails(run("plot", "fractions", labels, "--out", tmp_path / "f.png"),
                 "not a CSV table", tmp_path / "f.png", tmp_path)


@pytest.fixture
def two_points(tmp_path):
    np.savez(tmp_path / "train.npz", samples=np.array([[-1.0], [1.0]], dtype=np.float32))
    np.savez(tmp_path / "samples.npz", samples=np.array([[-1.0], [1.0]], dtype=np.float32))
    return tmp_path


@pytest.mark.parametrize("value", ["0", "-2"])
def test_curvature_n_eigen_below_one_is_a_usage_error(two_points, value):
    out = two_points / "curv"
    result = run("basins", "curvature", "--exact", two_points / "train.npz", "--samples",
                 two_points / "samples.npz", "--n-eigen", value, "--out", out)
    assert_fails(result, "--n-eigen", out, two_points, usage=True)


def test_critical_time_says_when_every_sample_is_censored_below_sigma_lo(two_points):
    """Two points at ±1, δ = 0.1: from σ_lo = 3 nothing is recovered, so every σ* lies
    below the bracket (recorded as 0): stdout says so, with the fix."""
    out = two_points / "ct"
    result = ok(run("basins", "critical-time", "--exact", two_points / "train.npz",
                    "--samples", two_points / "samples.npz", "--n-trials", 20,
                    "--sigma-lo", 3, "--sigma-hi", 5, "--out", out))
    assert "censored: 2 of 2 samples are not recovered even from σ_lo = 3" in result.output
    assert "lower --sigma-lo" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["censored_below"] == 2
    bracketed = ok(run("basins", "critical-time", "--exact", two_points / "train.npz",
                       "--samples", two_points / "samples.npz", "--n-trials", 20,
                       "--sigma-lo", 0.05, "--sigma-hi", 3, "--out", two_points / "ok"))
    assert "censored" not in bracketed.output


@pytest.mark.parametrize("synth", ["file", "none"])
def test_classify_state_without_a_streamed_synth_is_refused(sets, synth):
    out = sets["root"] / "out"
    extra = ["--synth", sets["eval"]] if synth == "file" else []
    result = run(*classify_args(sets, out, *extra, "--state", sets["root"] / "state.npz"))
    assert_fails(result, "--state resumes a streamed --synth", out, sets["root"])


# ------------------------------------------- 5. odd inputs found by trying every command


@pytest.mark.parametrize("args, phrase, usage", [
    (["phase", "--K", 2, "--sigma", 0.3, "--max-iter", 0], "--max-iter", True),
    (["phase", "--K", 2, "--sigma", 0.3, "--tol", -1], "--tol", True),
    (["phase", "--K", 2, "--sigma", 0.3, "--data-root", "."], "--data-root", False),
    (["landscape", "--K", 2, "--resolution", 0, "--checkpoint", "c.pt"], "--resolution", True),
    (["landscape", "--K", 2, "--sigma", 0], "--sigma", True),
    (["landscape", "--K", 2, "--sigma", 0.3], "--sigma: only with --checkpoint", False),
    (["landscape", "--K", 2, "--resolution", 50], "--resolution: only with --checkpoint", False),
], ids=["max-iter-0", "tol-negative", "data-root-circle", "resolution-0", "sigma-0",
        "sigma-without-checkpoint", "resolution-without-checkpoint"])
def test_phase_and_landscape_refuse_meaningless_or_ignored_options(tmp_path, args, phrase,
                                                                    usage):
    out = tmp_path / "out"
    assert_fails(run(*args, "--out", out), phrase, out, tmp_path, usage=usage)


def test_basins_labels_that_are_not_labels_are_one_line(two_points):
    (two_points / "empty.npz").write_bytes(b"")
    np.savez(two_points / "floats.npz", labels=np.array([0.5, 7.0]))
    np.savez(two_points / "ok.npz", labels=np.array([0, 1]))
    for labels, phrase in (("empty.npz", "cannot read"), ("floats.npz", "0 (memorized)")):
        out = two_points / "out"
        result = run("basins", "curvature", "--exact", two_points / "train.npz", "--samples",
                     two_points / "samples.npz", "--labels", two_points / labels, "--out", out)
        assert_fails(result, phrase, out, two_points)
    too_many = run("basins", "curvature", "--exact", two_points / "train.npz", "--samples",
                   two_points / "samples.npz", "--n-eigen", 3, "--out", two_points / "out")
    assert_fails(too_many, "D = 1 coordinates", two_points / "out", two_points)


def test_an_unreadable_torchscript_file_is_one_line(sets):
    (sets["root"] / "model.pt").write_bytes(b"not a zip archive")
    out = sets["root"] / "gen"
    result = run("generate", "--torchscript", sets["root"] / "model.pt", "--shape", 1, 2, 2,
                 "--n", 2, "--out", out)
    assert_fails(result, "cannot read TorchScript file", out, sets["root"])
