"""The main job's real-image sweep, CI-sized: digits, a tiny K grid, a few steps, the CLI."""

import csv
import json
import subprocess
import sys

import pytest

CI_SIZED = ["--set", "Ks=[2, 16, 64]", "--set", "train.iterations=40",
            "--set", "train.snapshots=[10, 20]", "--set", "sample.steps=10",
            "--set", "sample.n_eval=40", "--set", "measure.bootstrap=100",
            "--set", "executor.workers=1"]


@pytest.mark.slow
def test_images_cpu_sweep_end_to_end_with_its_training_time_axis(tmp_path):
    pytest.importorskip("sklearn")
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "memgen", "sweep", "configs/images-cpu.yaml",
                           *CI_SIZED, "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "MC:" in done.stdout and "GC:" in done.stdout
    rows = list(csv.DictReader((out / "fractions_steps.csv").open()))
    assert [(int(r["K"]), int(r["steps"])) for r in rows] == [
        (K, n) for K in (2, 16, 64) for n in (10, 20, 40)]
    final = {int(r["K"]): r for r in csv.DictReader((out / "fractions.csv").open())}
    for r in rows:  # the last state of each run is the row of fractions.csv
        if int(r["steps"]) == 40:
            assert r["memorized"] == final[int(r["K"])]["memorized"]
    timescale = json.loads((out / "timescale.json").read_text())
    assert timescale["Ks"] == [2, 16, 64] and timescale["steps"] == [10, 20, 40]
    assert (out / "phase_map.png").stat().st_size > 10_000
    report = (out / "report.html").read_text()
    assert "Training time" in report and "phase_map.png" in report
    # one training run per K, whatever the number of measured states
    assert len(list((out / "cache").glob("train-*"))) == 3
