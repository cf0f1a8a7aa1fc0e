"""The scripts in examples/ run as documented (``python examples/NAME.py --out DIR``) and
each ends in its figure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parents[1] / "examples"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("script, figure", [
    ("audit_samples.py", "neighbours.png"),
    ("sweep_checkpoints.py", "fractions.png"),
    ("energy_landscape.py", "landscape.png"),
])
def test_example_runs_and_draws_its_figure(script, figure, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, str(EXAMPLES / script), "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env=env,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (out / figure).read_bytes()[:8] == PNG_MAGIC
    assert str(out / figure) in done.stdout  # it says where its figure is


def test_every_example_is_tested_and_documented():
    scripts = sorted(p.name for p in EXAMPLES.glob("*.py"))
    assert scripts == ["audit_samples.py", "energy_landscape.py", "sweep_checkpoints.py"]
    for name in scripts:
        text = (EXAMPLES / name).read_text()
        assert text.startswith('"""') and f"python examples/{name} --out" in text
        assert len(text.splitlines()) <= 70
