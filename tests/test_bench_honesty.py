"""The benchmarks' honesty checks: the BLAS report, and the flag on a baseline too slow to
compare with (bench/common.py, imported from the bench folder as the scripts do)."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def common():
    spec = importlib.util.spec_from_file_location("bench_common", BENCH / "common.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def test_report_names_every_blas_and_thread_variable(common, monkeypatch):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "3")
    lines = common.blas_report()
    text = "\n".join(lines)
    assert lines[0].startswith(f"torch {torch.__version__}: ")
    assert f"{torch.get_num_threads()} threads" in lines[0]
    assert lines[1].startswith("numpy ") and "threads" in lines[1]
    assert lines[2].startswith("faiss")
    assert "OPENBLAS_NUM_THREADS=3" in text
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MKL_DYNAMIC"):
        assert f"{name}={os.environ.get(name, 'unset')}" in text


def test_flag_at_half_the_peak(common):
    assert common.handicap(200.0, 400.0) == ""
    note = common.handicap(199.0, 400.0)
    assert note.startswith("handicapped — check its BLAS") and "50 %" in note
    assert common.speedup_cell(8.0, 2.0, "") == "4.00"
    assert common.speedup_cell(8.0, 2.0, note) == "n/a"


def test_deliberately_slowed_baseline_is_flagged_and_a_fair_one_is_not(common):
    """The same GEMM done one row at a time (matrix-vector products, a crippled BLAS use)
    runs far below the machine's GEMM rate measured in the same run, and is flagged; the
    full GEMM is not. Rates are nominal 2·a·b·c flops over the best of nine runs."""
    a, b, c = 512, 512, 512
    x, y = torch.randn(a, b), torch.randn(b, c)
    out = torch.empty(a, c)
    flops = 2.0 * a * b * c

    def fair():  # into a buffer made once, as the GEMM rate is measured: late in a long
        return torch.matmul(x, y, out=out)  # process a fresh 1 MB output can double the time

    def slowed():
        return torch.stack([torch.mv(y.T, row) for row in x])

    plan = common.gemm_plan(((a, b, c),)) | {"fair": fair, "slowed": slowed}
    best = common.interleaved_best(plan, repeats=9)
    peak = flops / best[common.gemm_name((a, b, c))].seconds
    torch.testing.assert_close(slowed(), fair(), rtol=1e-4, atol=1e-3)
    assert common.handicap(flops / best["fair"].seconds, peak) == ""
    assert common.handicap(flops / best["slowed"].seconds, peak).startswith("handicapped")
