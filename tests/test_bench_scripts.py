"""The GPU step benchmark runs where no GPU is (its CPU smoke path), so that a session that
is lent one finds it working; and it refuses CUDA where there is none, before any work."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _run(*args):
    return subprocess.run([sys.executable, str(BENCH / "gpu_step.py"), *args],
                          capture_output=True, text=True, timeout=300)


def test_gpu_step_smoke_on_the_cpu():
    result = _run("--device", "cpu", "--preset", "toy-mlp", "--modes", "--batches", "2", "8",
                  "--steps", "3", "--warmup", "1")
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "×" in line]
    assert [r.split("|")[2].strip() for r in rows] == ["bare fwd+bwd+Adam", "TrainStep eager"] * 2
    assert all(r.split("|")[5].strip() for r in rows)
    assert rows[0].split("|")[5].strip() == "1.00×"  # the bare step is its own baseline


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_gpu_step_refuses_cuda_without_a_gpu():
    result = _run("--steps", "1")
    assert result.returncode == 2 and "no CUDA device here" in result.stderr
